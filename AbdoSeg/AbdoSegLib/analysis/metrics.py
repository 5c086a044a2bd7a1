"""Comparison metrics between a predicted and a reference labelmap, per organ.

The definitions are those of DeepMind's ``surface-distance`` package (Nikolov et al., 2021;
https://github.com/google-deepmind/surface-distance): a mask's surface is the set of
"surfels" at the corners of its voxels where the 2x2x2 neighbourhood holds both inside and
outside voxels, each weighted by its marching-cubes surface area (mm^2). Then

- hd: Hausdorff distance, the largest distance from a surfel of either surface to the other;
- hd95: the larger of the two directed, area-weighted 95th percentiles of those distances;
- assd: average symmetric surface distance, the area-weighted mean over both surfaces' surfels;
- nsd: normalised surface Dice, the area share of both surfaces within ``tolerance`` mm of
  the other surface (FLARE22's tolerances by default, ``NSD_TOLERANCE_MM``);
- dice: volumetric Dice; volumes in mL and their difference (prediction - reference).

Both labelmaps must lie on one grid (``require_one_grid``): a reference on another grid is
resampled once, where it enters (``io.regrid.labels_onto_grid`` in ``abdoseg compare`` and in
training evaluation; Slicer's export onto one volume in the scene comparison), never here.

Distances are in mm in world space. Empty masks are explicit (``status``): both empty ->
every comparison metric is None (not applicable; the volumes are 0.0); one empty -> dice 0,
nsd 0 and the distances ``float('inf')`` (the worst case). ``jsonable`` writes infinity as
the string "inf".

Why the distances are written here rather than taken from a library: ``surface-distance``
itself is unmaintained (it calls ``np.Inf``, gone in numpy 2, for an empty mask) and slow (a
distance transform of the whole box, then a Python sort of every surfel); MONAI's HD95 and ASSD
are unweighted means and percentiles over edge voxels, which differ from the surfel-area-weighted
definitions by several per cent (and MONAI would pull torch into Slicer's requirements). The
surfels and their areas come from ``surfels.py``, computed with VTK's marching cubes to
surface-distance's definition; Testing/test_metrics.py checks both against surface-distance.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from ..image import Image, bounding_boxes
from ..organs import ORGANS
from .surfels import surfel_areas, surfel_codes

# FLARE22's NSD tolerances (mm), from the challenge's evaluation script
# (github.com/JunMa11/FLARE, FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py): Liver 5, RK 3, LK 3, Spleen 3.
_FLARE22_TOLERANCE_MM = {"liver": 5.0, "right_kidney": 3.0, "left_kidney": 3.0, "spleen": 3.0}
NSD_TOLERANCE_MM: dict[str, float] = {organ.name: _FLARE22_TOLERANCE_MM[organ.name] for organ in ORGANS}
"""Default NSD tolerance (mm) of every organ of the table, keyed by organ name."""

METRICS = ("dice", "nsd", "hd", "hd95", "assd", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml")
"""The metric keys of every organ's entry in ``compare_labelmaps`` (besides ``status`` and ``nsd_tolerance_mm``)."""

# Distances between grid points that equal the tolerance exactly (e.g. 3-4-5 triangles) come out
# a few ulp above it from floating-point products; they count as within the tolerance.
_ROUNDING_MM = 1e-6

COMPARED, BOTH_EMPTY, PREDICTION_EMPTY, REFERENCE_EMPTY = "compared", "both_empty", "prediction_empty", "reference_empty"
"""The ``status`` of an organ's entry: found on both sides, on neither, or on one side only."""


def dice(prediction: np.ndarray, reference: np.ndarray) -> float | None:
    """Dice of two boolean masks of one shape; None when both are empty (not applicable)."""
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def dice_per_organ(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float | None]:
    """{organ name: Dice} for two uint8 labelmaps of one shape (voxel for voxel: one grid)."""
    if prediction.shape != reference.shape:
        raise ValueError(f"the labelmaps must lie on one grid, but their shapes differ: {prediction.shape} and {reference.shape}")
    return {organ.name: dice(prediction == organ.label, reference == organ.label) for organ in ORGANS}


def require_one_grid(prediction: Image, reference: Image) -> None:
    """Raise ValueError, naming the difference, unless both images lie on one grid (``Image.same_grid``: shape and affine)."""
    if prediction.same_grid(reference):
        return
    if prediction.shape != reference.shape:
        difference = f"their shapes differ: {prediction.shape} and {reference.shape}"
    else:
        difference = f"their voxel-to-world affines differ (by {np.abs(prediction.affine - reference.affine).max():.4g} at most, entry by entry)"
    raise ValueError(f"the labelmaps must lie on one grid, but {difference}; resample the reference onto the prediction first (io.regrid.labels_onto_grid)")


def compare_labelmaps(prediction: Image, reference: Image, tolerances: dict[str, float] | None = None) -> dict[str, dict]:
    """Per-organ metrics of a predicted labelmap against a reference labelmap on the same grid.

    prediction, reference: integer organ ids (organs.py), shape (I, J, K), one grid (shape and
    affine, ``require_one_grid``: a ValueError otherwise).
    tolerances: NSD tolerance in mm per organ name, overriding ``NSD_TOLERANCE_MM``.

    Returns {organ name: {"status", "dice", "nsd", "nsd_tolerance_mm", "hd", "hd95", "assd"
    (mm), "volume_pred_ml", "volume_ref_ml", "volume_diff_ml"}} for every organ of the table.
    """
    unknown = set(tolerances or {}) - set(NSD_TOLERANCE_MM)
    if unknown:
        raise ValueError(f"NSD tolerances given for unknown organs {sorted(unknown)}; the organs are {list(NSD_TOLERANCE_MM)}")
    tolerance_mm = {**NSD_TOLERANCE_MM, **(tolerances or {})}
    if not np.issubdtype(prediction.array.dtype, np.integer):
        raise ValueError(f"the prediction must hold integer organ ids, not {prediction.array.dtype}")
    require_one_grid(prediction, reference)
    pred_boxes = bounding_boxes(prediction.array)
    ref_boxes = bounding_boxes(reference.array)
    return {
        organ.name: _compare_organ(
            prediction.array,
            reference.array,
            organ.label,
            _union_box(pred_boxes, ref_boxes, organ.label),
            prediction,
            tolerance_mm[organ.name],
        )
        for organ in ORGANS
    }


def jsonable(results: dict[str, dict], digits: int = 4) -> dict[str, dict]:
    """``compare_labelmaps``'s results for JSON: floats rounded, infinity as "inf", None as null."""

    def convert(value):
        if isinstance(value, float):
            return "inf" if math.isinf(value) else round(value, digits)
        return value

    return {organ: {key: convert(value) for key, value in metrics.items()} for organ, metrics in results.items()}


def _union_box(pred_boxes: list, ref_boxes: list, label: int) -> tuple[slice, ...] | None:
    """The bounding box (slices) of ``label`` in either labelmap, from ``ndimage.find_objects``; None if absent in both."""
    boxes = [b[label - 1] for b in (pred_boxes, ref_boxes) if label <= len(b) and b[label - 1] is not None]
    if not boxes:
        return None
    return tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in range(3))


def _compare_organ(pred: np.ndarray, ref: np.ndarray, label: int, box: tuple[slice, ...] | None, grid: Image, tolerance: float) -> dict:
    """One organ's metrics; the masks are cut to ``box`` (their union bounding box) first."""
    entry = {"status": BOTH_EMPTY, "dice": None, "nsd": None, "nsd_tolerance_mm": tolerance, "hd": None, "hd95": None, "assd": None,
             "volume_pred_ml": 0.0, "volume_ref_ml": 0.0, "volume_diff_ml": 0.0}
    if box is None:
        return entry
    pred_mask, ref_mask = pred[box] == label, ref[box] == label
    pred_voxels, ref_voxels = int(pred_mask.sum()), int(ref_mask.sum())
    entry["volume_pred_ml"] = pred_voxels * grid.voxel_volume_ml
    entry["volume_ref_ml"] = ref_voxels * grid.voxel_volume_ml
    entry["volume_diff_ml"] = entry["volume_pred_ml"] - entry["volume_ref_ml"]
    entry["dice"] = 2.0 * int(np.count_nonzero(pred_mask & ref_mask)) / (pred_voxels + ref_voxels)
    if pred_voxels == 0 or ref_voxels == 0:
        entry.update(status=PREDICTION_EMPTY if pred_voxels == 0 else REFERENCE_EMPTY, nsd=0.0, hd=math.inf, hd95=math.inf, assd=math.inf)
        return entry
    (pred_d, pred_a), (ref_d, ref_a) = _surface_distances(pred_mask, ref_mask, grid)
    total_area = pred_a.sum() + ref_a.sum()
    within = tolerance + _ROUNDING_MM
    entry.update(
        status=COMPARED,
        hd=float(max(pred_d.max(), ref_d.max())),
        hd95=float(max(_weighted_percentile(pred_d, pred_a, 95.0), _weighted_percentile(ref_d, ref_a, 95.0))),
        assd=float((pred_d @ pred_a + ref_d @ ref_a) / total_area),
        nsd=float((pred_a[pred_d <= within].sum() + ref_a[ref_d <= within].sum()) / total_area),
    )
    return entry


def _surface_distances(mask_a: np.ndarray, mask_b: np.ndarray, grid: Image) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """For each mask's surfels: (distance in mm to the other surface, area in mm^2), both shape (N,).

    mask_a, mask_b: boolean (I, J, K), each non-empty, cut from ``grid`` (any box of it: only
    the voxel-to-world matrix and the spacing matter). Distances are exact Euclidean ones
    between surfel positions in world space, from a k-d tree over the other surface's surfels
    (cheaper than surface-distance's distance transform of the whole box, which the organs'
    large, thin-walled boxes make slow). A surfel that lies on both surfaces is at distance 0
    and is not queried.
    """
    areas = surfel_areas(tuple(float(s) for s in grid.spacing))
    linear = grid.affine[:3, :3]
    surfaces = []
    for mask in (mask_a, mask_b):
        border, code = surfel_codes(mask)
        index = np.nonzero(border)
        # einsum, not matmul: a 3x3 product gains nothing from BLAS threads, which stall on a busy machine.
        points = np.einsum("nk,jk->nj", np.stack(index, axis=1).astype(np.float64), linear)
        surfaces.append((border, index, points, areas[code[index]]))
    result = []
    for (_, index, points, own_areas), (other_border, _, other_points, _) in (surfaces, surfaces[::-1]):
        off_other = ~other_border[index]
        distances = np.zeros(len(points))
        if off_other.any():
            # An unbalanced tree with larger leaves builds faster on grid points and queries as fast.
            tree = cKDTree(other_points, leafsize=32, balanced_tree=False, compact_nodes=False)
            distances[off_other] = tree.query(points[off_other], workers=-1)[0]
        result.append((distances, own_areas))
    return tuple(result)


def _weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """surface-distance's robust Hausdorff percentile: the smallest distance whose cumulative area share reaches ``percent``."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order]) / areas.sum()
    index = min(int(np.searchsorted(cumulative, percent / 100.0)), len(order) - 1)
    return float(distances[order[index]])
