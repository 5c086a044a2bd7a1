"""Organ labelmaps <-> segmentation nodes: named, coloured segments with terminology, closed surfaces, organ matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util.numpy_support import numpy_to_vtk

from ..errors import AbdoSegError
from ..image import Image
from ..organs import BACKGROUND, ORGANS, Organ, organ_from_name
from ..surfaces.options import SMOOTHING_FACTOR
from .volumes import array_from_matrix, image_from_volume, remove_volume_node, scene_of

SEGMENTATION_NAME = "AbdoSeg"
"""Default name of the segmentation node made from a labelmap."""


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
        from ..io.image_files import (
            read_image,  # reads NIfTI with nibabel: imported only when a path is given
        )

        labels = read_image(labels)
    _check_organ_ids(labels)
    scene = scene_of(segmentation_node, reference_volume_node, scene)
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
    organ's title or machine name in any case, word order and separator (``organ_from_name``,
    as ``abdoseg compare`` matches .seg.nrrd segments). Each segment counts for one organ at
    most; organs without a matching segment are left out.
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
        return lambda segment: organ_from_name(segment.GetName() or "") == organ

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
        remove_volume_node(temporary)
    matrix = vtk.vtkMatrix4x4()
    geometry_volume_node.GetIJKToRASMatrix(matrix)
    return Image(array, array_from_matrix(matrix))


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
