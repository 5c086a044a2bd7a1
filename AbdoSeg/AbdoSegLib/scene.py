"""AbdoSeg results in a 3D Slicer MRML scene (layer 2 of DESIGN.md).

Turns an organ labelmap into a segmentation node (named, coloured segments with standard
terminology, on the input volume's geometry), builds closed surfaces with Slicer's own
converter, exports them with Slicer's segmentation logic, compares two segmentation nodes
with the engine's metrics and fills a table node.

Only Slicer's MRML and logic classes are used (``slicer.vtkMRML*``, ``vtkSegmentationCore``,
``vtkSlicerSegmentationsModuleLogic``'s static methods); nothing here needs ``slicer.app``,
``slicer.mrmlScene``, ``slicer.modules``, qt or ctk, so the module runs in 3D Slicer and under
the ``slicer-core`` package from PyPI alike. Every function takes its scene from the nodes it is
given (or as an argument).

Axis order: an engine ``Image`` holds ``array[i, j, k]``; Slicer's image data (and
``slicer.util.arrayFromVolume``) is ``[k, j, i]``; the conversion happens only in
``image_from_volume`` and ``_oriented_image``. World coordinates are RAS millimetres, as in
Slicer's scene; surface files are written in LPS (Slicer's default) or RAS, as asked.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from .errors import AbdoSegError
from .image import Image
from .organs import BACKGROUND, ORGANS, Organ, organ_by_name

SEGMENTATION_NAME = "AbdoSeg"
"""Default name of the segmentation node made from a labelmap."""

SMOOTHING_FACTOR = 0.5
"""Slicer's default "Smoothing factor" of the labelmap-to-surface conversion (0 none .. 1 strong)."""

SURFACE_FORMATS = ("STL", "OBJ", "PLY")
"""Surface file formats of ``export_surfaces``: STL and OBJ by Slicer's logic, PLY written here."""

METRICS_COLUMNS: tuple[tuple[str, str | None, str], ...] = (
    ("Organ", None, ""),
    ("Dice", "dice", ""),
    ("HD (mm)", "hd", "mm"),
    ("HD95 (mm)", "hd95", "mm"),
    ("ASSD (mm)", "assd", "mm"),
    ("NSD", "nsd", ""),
    ("Volume (mL)", "volume_pred_ml", "mL"),
    ("Reference volume (mL)", "volume_ref_ml", "mL"),
)
"""Columns of ``metrics_table``: (column name, key in a ``compare_labelmaps`` entry, unit)."""

_COLUMN_DESCRIPTIONS = {
    "Organ": "Organ (AbdoSeg organ table)",
    "Dice": "Volumetric Dice coefficient (0..1); empty: the organ is in neither segmentation",
    "HD (mm)": "Hausdorff distance (largest surface distance); inf: the organ is in only one segmentation",
    "HD95 (mm)": "95th percentile Hausdorff distance (larger of the two directed ones)",
    "ASSD (mm)": "Average symmetric surface distance",
    "NSD": "Normalised surface Dice at the organ's tolerance (0..1)",
    "Volume (mL)": "Organ volume in the segmentation",
    "Reference volume (mL)": "Organ volume in the reference segmentation",
}

_CONVERTER_RULES = (
    "vtkBinaryLabelmapToClosedSurfaceConversionRule",
    "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
    "vtkFractionalLabelmapToClosedSurfaceConversionRule",
)


def register_converter_rules() -> None:
    """Register Slicer's segmentation representation converters, once per process.

    The Segmentations module registers them when 3D Slicer starts
    (``vtkSlicerSegmentationsModuleLogic::RegisterNodes``); under ``slicer-core`` nobody does,
    and without them no closed surface can be made, nor even a segment added (the rules also
    construct the empty representation objects). ``RegisterConverterRule`` does not check
    for duplicates, so only the rules that are missing are added.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for class_name in _CONVERTER_RULES:
        if class_name not in present:
            factory.RegisterConverterRule(getattr(slicer, class_name)())


def load_volume(scene, path: str | Path, name: str | None = None):
    """Read a volume file (NIfTI, NRRD, ... anything ITK reads) into a new scalar volume node.

    Uses a ``vtkMRMLVolumeArchetypeStorageNode``, as Slicer's own loader does, and returns the
    ``vtkMRMLScalarVolumeNode`` (no display node: in the application use
    ``slicer.util.loadVolume``, which also sets up the views). Raises AbdoSegError when the file
    cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise AbdoSegError(f"{path} does not exist.")
    storage_node = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage_node.SetFileName(str(path))
    volume_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or _stem(path))
    volume_node.SetAndObserveStorageNodeID(storage_node.GetID())
    if not storage_node.ReadData(volume_node) or volume_node.GetImageData() is None:
        scene.RemoveNode(volume_node)
        scene.RemoveNode(storage_node)
        raise AbdoSegError(f"{path} could not be read as a volume.")
    return volume_node


def write_volume(volume_node, path: str | Path, compress: bool = False) -> Path:
    """Write a volume node's voxels and geometry (IJK to RAS, without any parent transform) to ``path``.

    The file format follows the name (``.nrrd`` is what the segmentation command reads fastest).
    A storage node of its own does the writing, so the volume node keeps its own storage
    node and file name (``slicer.util.saveNode`` would point the node at ``path``).
    """
    path = Path(path)
    if volume_node is None or volume_node.GetImageData() is None:
        raise AbdoSegError("the volume to write holds no image data.")
    storage_node = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage_node.SetFileName(str(path))
    storage_node.SetUseCompression(1 if compress else 0)
    if not storage_node.WriteData(volume_node):
        raise AbdoSegError(f"could not write the volume {volume_node.GetName()} to {path}.")
    return path


def image_from_volume(volume_node) -> Image:
    """A copy of a volume node's voxels as an engine Image: array (I, J, K), affine IJK to RAS (mm).

    The parent transform, if any, is not applied (the geometry is the node's own).
    """
    image_data = volume_node.GetImageData()
    if image_data is None:
        raise AbdoSegError(f"the volume {volume_node.GetName()} holds no image data.")
    dims = image_data.GetDimensions()
    scalars = image_data.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise AbdoSegError(f"the volume {volume_node.GetName()} has {scalars.GetNumberOfComponents()} values per voxel; a scalar volume is needed.")
    array = vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0).copy()
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return Image(array, _array_from_matrix(matrix))


def segmentation_from_labelmap(
    labels: Image | str | Path,
    reference_volume_node=None,
    name: str = SEGMENTATION_NAME,
    segmentation_node=None,
    scene=None,
):
    """A segmentation node holding the organs of a labelmap, one segment per organ of the table.

    labels: an Image of organ ids (0 background, see organs.py), array (I, J, K) and RAS
    affine, or the path of a labelmap file (NIfTI, NRRD). Every organ gets a segment (an organ
    without a voxel gets an empty one, as in the .seg.nrrd the command writes), with the
    segment ID ``organ.name``, the name ``organ.title``, the colour ``organ.color`` and the
    terminology ``organ.terminology_string``. The segments share one binary labelmap on the
    labels' grid (no resampling).

    reference_volume_node: the volume that was segmented; the segmentation gets its reference
    geometry (``SetReferenceImageGeometryParameterFromVolumeNode``) and its parent transform.
    Without it the reference geometry is the labelmap's own grid.

    segmentation_node: reuse this node (its segments are replaced) instead of adding a new one
    called ``name``. The scene is that of the segmentation node, the reference volume or ``scene``.
    Raises AbdoSegError when the labelmap holds values that are not organ ids.
    """
    if not isinstance(labels, Image):
        from .imageio import (
            read_image,  # reads NIfTI with nibabel: imported only when a path is given
        )

        labels = read_image(labels)
    _check_organ_ids(labels)
    scene = _scene_of(segmentation_node, reference_volume_node, scene)
    register_converter_rules()  # the rules also construct the (empty) representations of new segments

    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    else:
        segmentation_node.GetSegmentation().RemoveAllSegments()
    segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetSourceRepresentationToBinaryLabelmap()

    labelmap = _oriented_image(labels)
    if reference_volume_node is not None:
        # The transform first: the reference geometry is expressed in the segmentation's frame.
        segmentation_node.SetAndObserveTransformNodeID(reference_volume_node.GetTransformNodeID())
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    else:
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        segmentation_node.GetSegmentation().SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(matrix, labelmap),
        )

    # Label value v becomes the segment whose ID is at index v - 1 (empty IDs are skipped).
    segment_ids = vtk.vtkStringArray()
    by_label = {organ.label: organ.name for organ in ORGANS}
    for label in range(1, max(by_label) + 1):
        segment_ids.InsertNextValue(by_label.get(label, ""))
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, segment_ids):
        raise AbdoSegError(f"Slicer could not import the labelmap into the segmentation {segmentation_node.GetName()}.")

    segmentation = segmentation_node.GetSegmentation()
    for organ in ORGANS:
        segment = segmentation.GetSegment(organ.name)
        segment.SetName(organ.title)
        segment.SetColor(*organ.color)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        segment.SetTerminology(organ.terminology_string)
        slicer.vtkSlicerSegmentationsModuleLogic.SetSegmentStatus(segment, slicer.vtkSlicerSegmentationsModuleLogic.Completed)
    return segmentation_node


def create_closed_surfaces(segmentation_node, smoothing_factor: float = SMOOTHING_FACTOR) -> None:
    """Build (or rebuild) every segment's closed surface with Slicer's labelmap-to-surface converter.

    smoothing_factor: the conversion's "Smoothing factor", 0 (none) to 1 (strong). An existing
    closed surface is converted again, so that a new factor takes effect. The 3D views show the
    closed surface once it exists.

    A segmentation copies the registered converter rules when it is created; one created
    before ``register_converter_rules`` (possible only outside the Slicer application) cannot
    convert, and is renewed first: its segments and parameters move into a new
    ``vtkSegmentation``, as Slicer's segmentation storage node does when it reads a file.
    """
    if not 0.0 <= smoothing_factor <= 1.0:
        raise AbdoSegError(f"the smoothing factor must be between 0 and 1, got {smoothing_factor:g}.")
    register_converter_rules()
    if not _convert_to_closed_surfaces(segmentation_node, smoothing_factor):
        renewed = slicer.vtkSegmentation()
        renewed.DeepCopy(segmentation_node.GetSegmentation())
        segmentation_node.SetAndObserveSegmentation(renewed)
        if not _convert_to_closed_surfaces(segmentation_node, smoothing_factor):
            raise AbdoSegError(f"Slicer could not build closed surfaces for the segmentation {segmentation_node.GetName()}.")


def _convert_to_closed_surfaces(segmentation_node, smoothing_factor: float) -> bool:
    segmentation = segmentation_node.GetSegmentation()
    segmentation.SetConversionParameter(
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule.GetSmoothingFactorParameterName(), f"{smoothing_factor:g}"
    )
    closed_surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    if segmentation.ContainsRepresentation(closed_surface):
        return bool(segmentation.CreateRepresentation(closed_surface, True))
    return bool(segmentation_node.CreateClosedSurfaceRepresentation())


def organ_segments(segmentation_node) -> dict[str, str]:
    """{organ name: segment ID} for the organs found among a segmentation's segments.

    A segment is an organ when its terminology has the organ's type and type modifier codes
    (and category), as in Slicer's terminology matching; failing that, when its name is the
    organ's title or machine name (any case; "_" and spaces alike). Each segment counts for one
    organ at most; organs without a matching segment are left out.
    """
    from slicerio.segmentation import (
        terminology_entry_from_string,
        terminology_entry_matches,
    )

    segmentation = segmentation_node.GetSegmentation()
    segments = [(segment_id, segmentation.GetSegment(segment_id)) for segment_id in segmentation.GetSegmentIDs()]
    found: dict[str, str] = {}

    def take(organ: Organ, test) -> None:
        for segment_id, segment in segments:
            if segment_id not in found.values() and test(segment):
                found[organ.name] = segment_id
                return

    def same_terminology(organ: Organ):
        wanted = organ.terminology

        def test(segment) -> bool:
            text = segment.GetTerminology() if segment.HasTerminology() else ""
            try:
                return bool(text) and terminology_entry_matches(terminology_entry_from_string(text), wanted)
            except (IndexError, KeyError):  # a malformed terminology string is no match
                return False

        return test

    def same_name(organ: Organ):
        names = {_name_key(organ.title), _name_key(organ.name)}
        return lambda segment: _name_key(segment.GetName() or "") in names

    for organ in ORGANS:
        take(organ, same_terminology(organ))
    for organ in ORGANS:
        if organ.name not in found:
            take(organ, same_name(organ))
    return {organ.name: found[organ.name] for organ in ORGANS if organ.name in found}


def labelmap_from_segments(segmentation_node, segments: dict[str, str], geometry_volume_node) -> Image:
    """The given segments as one organ labelmap (uint8 organ ids) on a volume's grid.

    segments: {organ name: segment ID}; each segment is exported with Slicer's logic
    (``ExportSegmentsToLabelmapNode``, which applies the transforms between the segmentation and
    the volume) onto ``geometry_volume_node``'s grid. Where segments overlap, the organ later in
    the organ table wins. Returns an Image on that grid (its own IJK to RAS).
    """
    scene = segmentation_node.GetScene()
    segmentation = segmentation_node.GetSegmentation()
    dims = geometry_volume_node.GetImageData().GetDimensions()
    array = np.zeros((dims[0], dims[1], dims[2]), dtype=np.uint8)
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "AbdoSeg temporary labelmap")
    try:
        for organ in ORGANS:
            segment_id = segments.get(organ.name)
            if segment_id is None:
                continue
            if segmentation.GetSegment(segment_id) is None:
                raise AbdoSegError(f"the segmentation {segmentation_node.GetName()} has no segment with the ID {segment_id!r}.")
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, temporary, geometry_volume_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
            ):
                raise AbdoSegError(f"Slicer could not export the segment {segment_id!r} of {segmentation_node.GetName()} to a labelmap.")
            mask = image_from_volume(temporary).array != 0
            if mask.shape != array.shape:
                raise AbdoSegError(f"the segment {segment_id!r} was exported onto a grid of {mask.shape}, not the expected {array.shape}.")
            array[mask] = organ.label
    finally:
        _remove_volume_node(temporary)
    matrix = vtk.vtkMatrix4x4()
    geometry_volume_node.GetIJKToRASMatrix(matrix)
    return Image(array, _array_from_matrix(matrix))


def compare_segmentations(
    prediction_node,
    reference_node,
    mapping: dict[str, str] | None = None,
    geometry_volume_node=None,
    tolerances: dict[str, float] | None = None,
) -> dict[str, dict]:
    """Per-organ metrics of a predicted segmentation node against a reference segmentation node.

    Segments are matched to organs with ``organ_segments`` in both nodes; ``mapping``
    ({organ name: reference segment ID}) names the reference segments by hand instead, for
    the organs it lists. Both are exported onto one grid: ``geometry_volume_node``, else the
    prediction's reference-geometry volume, else the prediction's own reference geometry. The
    engine's ``compare_labelmaps`` does the rest; an organ present on one side only is
    reported as such (infinite distances), never dropped.

    Returns {organ name: {"status", "dice", "hd", "hd95", "assd", "nsd", "nsd_tolerance_mm",
    "volume_pred_ml", "volume_ref_ml", "volume_diff_ml"}} for every organ of the table.
    """
    from .metrics import (
        compare_labelmaps,  # scipy (and MONAI's surfel table) only when comparing
    )

    predicted = organ_segments(prediction_node)
    if not predicted:
        raise AbdoSegError(f"no segment of {prediction_node.GetName()} is an AbdoSeg organ ({_titles()}) by terminology or name.")
    referenced = organ_segments(reference_node)
    for organ_name, segment_id in (mapping or {}).items():
        organ_by_name(organ_name)  # KeyError with the list of organs for a wrong name
        if reference_node.GetSegmentation().GetSegment(segment_id) is None:
            raise AbdoSegError(f"the reference segmentation {reference_node.GetName()} has no segment with the ID {segment_id!r}.")
        referenced[organ_name] = segment_id
    if not referenced:
        raise AbdoSegError(
            f"no segment of the reference {reference_node.GetName()} is an AbdoSeg organ ({_titles()}) by terminology or name; "
            "name its segments like the organs or give a mapping."
        )

    scene = prediction_node.GetScene()
    made_geometry = None
    if geometry_volume_node is None:
        geometry_volume_node = prediction_node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    if geometry_volume_node is None or geometry_volume_node.GetImageData() is None:
        made_geometry = _reference_geometry_volume(scene, prediction_node)
        geometry_volume_node = made_geometry
    try:
        prediction = labelmap_from_segments(prediction_node, predicted, geometry_volume_node)
        reference = labelmap_from_segments(reference_node, referenced, geometry_volume_node)
    finally:
        if made_geometry is not None:
            _remove_volume_node(made_geometry)
    return compare_labelmaps(prediction, reference, tolerances)


def metrics_table(scene, metrics: dict[str, dict], table_node=None, name: str = "AbdoSeg comparison"):
    """A table node with one row per organ of ``metrics`` (a ``compare_labelmaps`` result).

    Columns: see ``METRICS_COLUMNS`` (with units and descriptions). A metric that does not
    apply (None: the organ is in neither segmentation) is NaN, shown as an empty-looking
    "nan"; an organ found on one side only has infinite distances ("inf"). Rows follow the
    organ table; organs missing from ``metrics`` get no row. ``table_node`` is refilled if given.
    """
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table_node.RemoveAllColumns()
    rows = [organ for organ in ORGANS if organ.name in metrics]
    columns = []
    for column_name, key, _unit in METRICS_COLUMNS:
        column = vtk.vtkStringArray() if key is None else vtk.vtkDoubleArray()
        column.SetName(column_name)
        for organ in rows:
            if key is None:
                column.InsertNextValue(organ.title)
            else:
                column.InsertNextValue(_number(metrics[organ.name].get(key)))
        columns.append(column)
    table = table_node.GetTable()
    for column in columns:
        table.AddColumn(column)
    for column_name, _key, unit in METRICS_COLUMNS:
        if unit:
            table_node.SetColumnUnitLabel(column_name, unit)
        table_node.SetColumnDescription(column_name, _COLUMN_DESCRIPTIONS[column_name])
    table_node.Modified()
    return table_node


def export_surfaces(
    segmentation_node,
    folder: str | Path,
    fmt: str = "STL",
    lps: bool = True,
    merge: bool = False,
    segment_ids: list[str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write segments' closed surfaces to ``folder`` (which must exist); returns the files written.

    fmt: "STL" (one file per segment, or one merged file), "OBJ" (one .obj holding every
    segment, with its .mtl of segment colours) through Slicer's
    ``ExportSegmentsClosedSurfaceRepresentationToFiles``; "PLY" (binary, per-vertex segment
    colours) written here the same way. lps: LPS coordinates (Slicer's default) or RAS, in mm;
    the file says which ("SPACE=LPS" in the STL header, the OBJ and PLY comments). merge: one
    file for all segments (STL and PLY; OBJ always holds all). File names follow Slicer:
    ``<segmentation name>_<segment name>.stl``, ``<segmentation name>.obj``.

    segment_ids: the segments to write; by default every segment with a non-empty surface.
    Closed surfaces are made first if the segmentation has none (``create_closed_surfaces``).
    The files are written in a staging folder inside ``folder`` and moved in when all are
    done; an existing file is not replaced unless ``overwrite``.
    """
    fmt = fmt.upper()
    if fmt not in SURFACE_FORMATS:
        raise ValueError(f"fmt must be one of {SURFACE_FORMATS}, got {fmt!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise AbdoSegError(f"the export folder {folder} does not exist.")
    segmentation = segmentation_node.GetSegmentation()
    closed_surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    if not segmentation.ContainsRepresentation(closed_surface):
        create_closed_surfaces(segmentation_node)
    if segment_ids is None:
        segment_ids = [
            segment_id
            for segment_id in segmentation.GetSegmentIDs()
            if _has_points(segmentation.GetSegment(segment_id).GetRepresentation(closed_surface))
        ]
    if not segment_ids:
        raise AbdoSegError(f"the segmentation {segmentation_node.GetName()} has no segment with a surface to export.")
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        if segmentation.GetSegment(segment_id) is None:
            raise AbdoSegError(f"the segmentation {segmentation_node.GetName()} has no segment with the ID {segment_id!r}.")
        ids.InsertNextValue(segment_id)

    staging = Path(tempfile.mkdtemp(prefix=".abdoseg-export-", dir=folder))
    try:
        if fmt == "PLY":
            _write_ply(segmentation_node, ids, staging, lps, merge)
        elif not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
            str(staging), segmentation_node, ids, fmt, lps, 1.0, merge
        ):
            raise AbdoSegError(f"Slicer could not export the surfaces of {segmentation_node.GetName()} to {folder}.")
        written = sorted(staging.iterdir())
        targets = [folder / path.name for path in written]
        existing = [target for target in targets if target.exists()]
        if existing and not overwrite:
            raise AbdoSegError(f"{existing[0]} already exists; choose another folder or allow replacing files.")
        for path, target in zip(written, targets):
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


# ----------------------------------------------------------------------------------------------


def _scene_of(*candidates):
    """The first node's scene, or a scene given as such."""
    for candidate in candidates:
        if candidate is None:
            continue
        if isinstance(candidate, slicer.vtkMRMLScene):
            return candidate
        if candidate.GetScene() is not None:
            return candidate.GetScene()
    raise ValueError("no MRML scene: give a segmentation node, a reference volume node or a scene")


def _check_organ_ids(labels: Image) -> None:
    allowed = np.array([BACKGROUND] + [organ.label for organ in ORGANS])
    values = np.unique(labels.array)
    unknown = values[~np.isin(values, allowed)]
    if unknown.size:
        shown = ", ".join(f"{v:g}" for v in unknown[:5]) + (", ..." if unknown.size > 5 else "")
        table = ", ".join(f"{organ.label} {organ.name}" for organ in ORGANS)
        raise AbdoSegError(f"the labelmap holds values ({shown}) that are not organ labels (0 background, {table}).")


def _oriented_image(labels: Image):
    """A ``vtkOrientedImageData`` (uint8) holding an Image's voxels with its IJK to RAS geometry."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*(int(n) for n in labels.shape))
    voxels = np.ascontiguousarray(np.asarray(labels.array, dtype=np.uint8).transpose(2, 1, 0)).ravel()
    image.GetPointData().SetScalars(numpy_to_vtk(voxels, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(labels.affine[row, column]))
    image.SetImageToWorldMatrix(matrix)
    return image


def _array_from_matrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _reference_geometry_volume(scene, segmentation_node):
    """A temporary labelmap volume node on a segmentation's reference geometry (the whole extent)."""
    geometry = slicer.vtkOrientedImageData()
    text = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    if not text or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, geometry, True, vtk.VTK_UNSIGNED_CHAR, 1):
        raise AbdoSegError(f"the segmentation {segmentation_node.GetName()} has no reference geometry to compare on.")
    volume_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "AbdoSeg temporary geometry")
    if not slicer.vtkSlicerSegmentationsModuleLogic.CreateLabelmapVolumeFromOrientedImageData(geometry, volume_node):
        _remove_volume_node(volume_node)
        raise AbdoSegError(f"could not make a volume on the reference geometry of {segmentation_node.GetName()}.")
    volume_node.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
    return volume_node


def _remove_volume_node(volume_node) -> None:
    scene = volume_node.GetScene()
    if scene is None:
        return
    for index in reversed(range(volume_node.GetNumberOfDisplayNodes())):
        display_node = volume_node.GetNthDisplayNode(index)
        if display_node is None:
            continue
        colour_node = display_node.GetColorNode()
        # The export makes a colour table for the labelmap; Slicer's built-in tables are singletons and stay.
        if colour_node is not None and not colour_node.GetSingletonTag():
            scene.RemoveNode(colour_node)
        scene.RemoveNode(display_node)
    if volume_node.GetStorageNode() is not None:
        scene.RemoveNode(volume_node.GetStorageNode())
    scene.RemoveNode(volume_node)


def _has_points(poly_data) -> bool:
    return poly_data is not None and poly_data.GetNumberOfPoints() > 0


def _number(value) -> float:
    """A metric for a table cell: None (not applicable) as NaN, infinity kept."""
    if value is None:
        return math.nan
    return float(value)


def _name_key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _titles() -> str:
    return ", ".join(organ.title for organ in ORGANS)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".seg.nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _safe_file_name(name: str) -> str:
    """A node or segment name as Slicer's ``vtkSlicerSegmentationsModuleLogic::GetSafeFileName`` makes it."""
    return "".join(re.findall(r"[-A-Za-z0-9 _.()$!~#'%^{}]", name)).strip()


def _write_ply(segmentation_node, segment_ids, folder: Path, lps: bool, merge: bool) -> None:
    """Binary PLY files of segments' closed surfaces (parent transform applied), per-vertex RGB."""
    space = "LPS" if lps else "RAS"
    segmentation = segmentation_node.GetSegmentation()
    to_space = vtk.vtkTransform()
    if lps:
        to_space.Scale(-1.0, -1.0, 1.0)
    base = _safe_file_name(segmentation_node.GetName() or SEGMENTATION_NAME)
    meshes = []
    for index in range(segment_ids.GetNumberOfValues()):
        segment_id = segment_ids.GetValue(index)
        poly_data = vtk.vtkPolyData()
        if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentClosedSurfaceRepresentation(segmentation_node, segment_id, poly_data):
            raise AbdoSegError(f"Slicer could not make the closed surface of the segment {segment_id!r}.")
        transform = vtk.vtkTransformPolyDataFilter()
        transform.SetTransform(to_space)
        transform.SetInputData(poly_data)
        triangles = vtk.vtkTriangleFilter()
        triangles.SetInputConnection(transform.GetOutputPort())
        triangles.Update()
        mesh = triangles.GetOutput()
        colour = segmentation.GetSegment(segment_id).GetColor()
        rgb = np.tile(np.round(np.clip(colour, 0.0, 1.0) * 255).astype(np.uint8), (mesh.GetNumberOfPoints(), 1))
        colours = numpy_to_vtk(rgb, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
        colours.SetName("RGB")
        mesh.GetPointData().AddArray(colours)
        meshes.append((segmentation.GetSegment(segment_id).GetName(), mesh))
    if merge:
        append = vtk.vtkAppendPolyData()
        for _name, mesh in meshes:
            append.AddInputData(mesh)
        append.Update()
        meshes = [(None, append.GetOutput())]
    for segment_name, mesh in meshes:
        path = folder / (f"{base}.ply" if segment_name is None else f"{base}_{segment_name}.ply")
        writer = vtk.vtkPLYWriter()
        writer.SetFileName(str(path))
        writer.SetInputData(mesh)
        writer.SetFileTypeToBinary()
        writer.AddComment(f"3D Slicer output. SPACE={space}")
        writer.SetArrayName("RGB")
        writer.SetColorModeToDefault()
        writer.EnableAlphaOff()
        if not writer.Write():
            raise AbdoSegError(f"could not write {path}.")
