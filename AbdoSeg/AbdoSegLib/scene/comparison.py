"""Two segmentation nodes compared with the engine's metrics, and the metrics as a table node."""

from __future__ import annotations

import math

import numpy as np
import slicer
import vtk

from ..errors import AbdoSegError
from ..image import Image
from ..io.regrid import covered_voxels
from ..organs import ORGANS, organ_by_name
from .segmentations import labelmap_from_segments, organ_segments
from .volumes import array_from_matrix, image_from_volume, remove_volume_node

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
    engine's ``compare_in_common_region`` does the rest, as in ``abdoseg compare``: only the region
    that the reference's field of view (its reference image geometry) and that grid both cover
    counts; an organ present on one side only is reported as such (infinite distances), never dropped.
    A reference without a reference geometry, or behind a non-linear transform, counts as covering the grid.

    Returns {organ name: {"status", "dice", "hd", "hd95", "assd", "nsd", "nsd_tolerance_mm",
    "volume_pred_ml", "volume_ref_ml", "volume_diff_ml"}} for every organ of the table and, when
    organ labels lie outside the region both cover, ``"region"`` (see ``compare_in_common_region``;
    its "note" is one sentence for the user).
    """
    from ..analysis.metrics import (
        compare_in_common_region,  # scipy (and the surfel table, built with VTK) only when comparing
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
        made_geometry = reference_geometry_volume(scene, prediction_node)
        geometry_volume_node = made_geometry
    try:
        prediction = labelmap_from_segments(prediction_node, predicted, geometry_volume_node)
        reference = labelmap_from_segments(reference_node, referenced, geometry_volume_node)
        covered, reference_outside_ml = _fields_of_view(reference_node, referenced, geometry_volume_node, prediction)
    finally:
        if made_geometry is not None:
            remove_volume_node(made_geometry)
    names = (prediction_node.GetName(), reference_node.GetName())
    return compare_in_common_region(prediction, reference, covered, reference_outside_ml, names, tolerances)


def metrics_table(scene, metrics: dict[str, dict], table_node=None, name: str = "AbdoSeg comparison"):
    """A table node with one row per organ of ``metrics`` (a ``compare_segmentations`` result; its "region" entry is no row).

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


def reference_geometry_volume(scene, segmentation_node):
    """A temporary labelmap volume node on a segmentation's reference geometry (the whole extent)."""
    geometry = _geometry(segmentation_node)
    if geometry is None:
        raise AbdoSegError(f"the segmentation {segmentation_node.GetName()} has no reference geometry to compare on.")
    volume_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "AbdoSeg temporary geometry")
    if not slicer.vtkSlicerSegmentationsModuleLogic.CreateLabelmapVolumeFromOrientedImageData(geometry, volume_node):
        remove_volume_node(volume_node)
        raise AbdoSegError(f"could not make a volume on the reference geometry of {segmentation_node.GetName()}.")
    volume_node.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
    return volume_node


def _fields_of_view(reference_node, referenced: dict[str, str], geometry_volume_node, grid: Image) -> tuple[np.ndarray, dict[str, float] | None]:
    """(covered, reference_outside_ml) for ``compare_in_common_region``.

    covered: bool, the shape of ``grid`` (the labelmaps exported onto ``geometry_volume_node``):
    its voxels inside the reference's field of view, which is its reference image geometry.
    reference_outside_ml: {organ name: mL} of the reference's segments (``referenced``) outside
    ``grid``'s field of view. Without a reference geometry or across a non-linear transform:
    all of ``grid`` covered, and None (unknown).
    """
    from ..analysis.metrics import organ_volumes_outside

    to_grid = _linear_transform(reference_node, geometry_volume_node)
    if to_grid is None or _geometry(reference_node, allocate=False) is None:
        return np.ones(grid.shape, dtype=bool), None
    volume_node = reference_geometry_volume(reference_node.GetScene(), reference_node)
    try:
        field = image_from_volume(volume_node)  # zeros on the reference's own grid, in its own frame
        covered = covered_voxels(Image(field.array, to_grid @ field.affine), grid)
        covered_there = covered_voxels(Image(grid.array, np.linalg.inv(to_grid) @ grid.affine), field)
        if covered_there.all():  # then nothing of the reference is lost, and it need not be exported onto its own grid
            return covered, {organ.name: 0.0 for organ in ORGANS}
        own = labelmap_from_segments(reference_node, referenced, volume_node)
        return covered, organ_volumes_outside(own, covered_there)
    finally:
        remove_volume_node(volume_node)


def _geometry(segmentation_node, allocate: bool = True):
    """A segmentation's reference image geometry (its field of view) as a ``vtkOrientedImageData`` (uint8 zeros if ``allocate``); None if it has none."""
    geometry = slicer.vtkOrientedImageData()
    text = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    if not text or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, geometry, allocate, vtk.VTK_UNSIGNED_CHAR, 1):
        return None
    return geometry


def _linear_transform(source_node, target_node) -> np.ndarray | None:
    """The 4x4 matrix from ``source_node``'s frame to ``target_node``'s (their parent transforms); None if a transform is non-linear."""
    parents = (source_node.GetParentTransformNode(), target_node.GetParentTransformNode())
    if any(parent is not None and not parent.IsTransformToWorldLinear() for parent in parents):
        return None
    matrix = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(*parents, matrix)
    return array_from_matrix(matrix)


def _number(value) -> float:
    """A metric for a table cell: None (not applicable) as NaN, infinity kept."""
    if value is None:
        return math.nan
    return float(value)


def _titles() -> str:
    return ", ".join(organ.title for organ in ORGANS)
