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
Where the two fields of view differ, ``compare_in_common_region`` compares inside the region
both cover and says what it left out (``abdoseg compare`` and the scene comparison use it).

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

import itertools
import math

import numpy as np
from scipy.spatial import cKDTree

from ..errors import AbdoSegError
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

REGION = "region"
"""The key beside the organ names under which ``compare_in_common_region`` says what it left out."""

_WORLD_AXES = ("left-right", "posterior-anterior", "inferior-superior")  # RAS


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
    """``compare_labelmaps``'s (or ``compare_in_common_region``'s) results for JSON: floats rounded, infinity as "inf", None as null."""

    def convert(value):
        if isinstance(value, float):
            return "inf" if math.isinf(value) else round(value, digits)
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(item) for item in value]
        return value

    return convert(results)


def compare_in_common_region(
    prediction: Image,
    reference: Image,
    covered: np.ndarray,
    reference_outside_ml: dict[str, float] | None = None,
    names: tuple[str, str] = ("the prediction", "the reference"),
    tolerances: dict[str, float] | None = None,
) -> dict[str, dict]:
    """``compare_labelmaps`` inside the region that both labelmaps' fields of view cover.

    prediction: organ ids on its grid, (I, J, K). reference: the reference resampled onto that
    grid (``io.regrid.labels_onto_grid``: 0 outside its field of view). covered: bool (I, J, K),
    the voxels inside the reference's field of view (``io.regrid.covered_voxels``): the region both
    cover. reference_outside_ml: {organ name: mL} of the reference's organ labels outside the
    prediction's field of view (``organ_volumes_outside``), which the resampling dropped; None if
    unknown. names: what sentences call the prediction and the reference (file or node names).

    The metrics run on the prediction's grid. Its labels outside the region become background:
    the reference cannot judge them, so they are not false positives. An organ cut by the
    region's edge then has the same flat face in both labelmaps, as if both were cropped to the
    region's box (a surfel at an array's edge lies where it lies at a mask's edge); unlike that
    box, the mask also leaves out what the box of an oblique region holds beyond the reference's
    view. The reference's organs outside the prediction's view are not counted as missed either:
    the resampling onto the prediction's grid dropped them; ``reference_outside_ml`` says how much.

    Returns ``compare_labelmaps``'s {organ name: entry} and, only when organ labels of either side
    lie outside the region (and so are left out), REGION: {"note": one sentence saying so,
    "prediction_share": the region's share of the prediction's voxels (0..1), "ras_min_mm",
    "ras_max_mm": the world box of the region (3 floats each), "prediction_outside_ml",
    "reference_outside_ml": {organ name: mL} left out on each side (the latter None if unknown)}.
    Raises AbdoSegError when the fields of view do not overlap or the reference's organs all lie
    outside the prediction's.
    """
    predicted, referenced = names
    if not covered.any():
        raise AbdoSegError(f"the field of view of {referenced} lies entirely outside the field of view of {predicted}; are they of the same scan?")
    if sum((reference_outside_ml or {}).values()) > 0 and not reference.array.any():
        raise AbdoSegError(f"the organs of {referenced} all lie outside the field of view of {predicted}; are they of the same scan?")
    prediction_outside_ml = organ_volumes_outside(prediction, covered)
    if not covered.all():
        prediction = prediction.with_array(np.where(covered, prediction.array, 0).astype(prediction.array.dtype, copy=False))
    results = compare_labelmaps(prediction, reference, tolerances)
    if sum(prediction_outside_ml.values()) > 0 or sum((reference_outside_ml or {}).values()) > 0:
        results[REGION] = _region(prediction, covered, prediction_outside_ml, reference_outside_ml, names)
    return results


def organ_volumes_outside(labels: Image, covered: np.ndarray) -> dict[str, float]:
    """{organ name: mL of the organ's voxels where ``covered`` (bool, the shape of ``labels``) is False}, every organ of the table."""
    counts = np.zeros(max(organ.label for organ in ORGANS) + 1, dtype=np.int64)
    if not covered.all():
        outside = np.asarray(labels.array)[~covered]
        outside = outside[(outside > 0) & (outside < len(counts))]
        counts = np.bincount(outside.astype(np.intp), minlength=len(counts))
    return {organ.name: int(counts[organ.label]) * labels.voxel_volume_ml for organ in ORGANS}


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


def _region(grid: Image, covered: np.ndarray, prediction_outside_ml: dict, reference_outside_ml: dict | None, names: tuple[str, str]) -> dict:
    """``compare_in_common_region``'s REGION entry: the region both cover, what lies outside it, and a sentence."""
    predicted, referenced = names
    spans = [np.flatnonzero(covered.any(axis=others)) for others in ((1, 2), (0, 2), (0, 1))]  # covered indices along i, j, k
    region_min, region_max = _world_box(grid.affine, [span[0] - 0.5 for span in spans], [span[-1] + 0.5 for span in spans])
    grid_min, grid_max = _world_box(grid.affine, [-0.5] * 3, [n - 0.5 for n in grid.shape])
    share = float(covered.mean())
    cut = [f"{region_max[a] - region_min[a]:.1f} of {grid_max[a] - grid_min[a]:.1f} mm {_WORLD_AXES[a]}"
           for a in range(3) if region_max[a] - region_min[a] < grid_max[a] - grid_min[a] - 0.01]
    share_text = f"{100 * share:.3g} % of {predicted}'s field of view" if share < 1.0 else f"all of {predicted}'s field of view"
    note = f"compared inside the region both fields of view cover ({', '.join(cut + [share_text])})"
    if sum(prediction_outside_ml.values()) > 0:
        note += f"; outside it, {predicted} has {_labels_phrase(prediction_outside_ml)} that {referenced} cannot judge"
    if sum((reference_outside_ml or {}).values()) > 0:
        note += f"; {referenced} has {_labels_phrase(reference_outside_ml)} outside the field of view of {predicted}, not counted as missed"
    return {"note": note + ".", "prediction_share": share, "ras_min_mm": [float(v) for v in region_min], "ras_max_mm": [float(v) for v in region_max],
            "prediction_outside_ml": prediction_outside_ml, "reference_outside_ml": reference_outside_ml}


def _world_box(affine: np.ndarray, low: list[float], high: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The world (RAS mm) bounding box, (min, max) of shape (3,) each, of the voxel-index box from ``low`` to ``high``."""
    corners = np.array(list(itertools.product(*zip(low, high))), dtype=np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def _labels_phrase(volumes_ml: dict[str, float]) -> str:
    """"12.3 mL of organ labels (liver 10.0, spleen 2.3)": the total and the organs that have some."""
    parts = ", ".join(f"{name.replace('_', ' ')} {ml:.1f}" for name, ml in volumes_ml.items() if ml > 0)
    return f"{sum(volumes_ml.values()):.1f} mL of organ labels ({parts})"


def _weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """surface-distance's robust Hausdorff percentile: the smallest distance whose cumulative area share reaches ``percent``."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order]) / areas.sum()
    index = min(int(np.searchsorted(cumulative, percent / 100.0)), len(order) - 1)
    return float(distances[order[index]])
