"""Comparison metrics: exact answers on spheres and boxes, empty masks, one grid (other grids are
resampled before, never inside), and agreement with DeepMind's surface-distance package (a
test-only dependency)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import surface_distance
from scipy import ndimage
from surface_distance import lookup_tables

from AbdoSegLib.analysis import surfels
from AbdoSegLib.analysis.metrics import (
    BOTH_EMPTY,
    COMPARED,
    METRICS,
    NSD_TOLERANCE_MM,
    PREDICTION_EMPTY,
    REFERENCE_EMPTY,
    compare_labelmaps,
    dice,
    dice_per_organ,
    jsonable,
)
from AbdoSegLib.image import Image
from AbdoSegLib.io.regrid import labels_onto_grid
from AbdoSegLib.organs import ORGAN_NAMES, ORGANS, organ_by_name

LIVER = organ_by_name("liver").label
SPLEEN = organ_by_name("spleen").label
ANISOTROPIC = (0.7, 0.7, 2.5)
SHAPE = (80, 80, 30)
DISTANCES = ("hd", "hd95", "assd")


def grid_affine(spacing, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Axis-aligned voxel-to-RAS affine with ``spacing`` (mm) and ``origin`` (mm)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def ball(shape, affine, centre_mm, radius_mm, label=LIVER) -> np.ndarray:
    """uint8 labelmap, ``label`` where the voxel centre lies within ``radius_mm`` of ``centre_mm`` (world)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    return np.where(np.linalg.norm(world - np.asarray(centre_mm), axis=-1) <= radius_mm, label, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def sphere() -> Image:
    """A 12 mm ball of liver label on an anisotropic 0.7 x 0.7 x 2.5 mm grid."""
    affine = grid_affine(ANISOTROPIC)
    return Image(ball(SHAPE, affine, (28.0, 28.0, 37.5), 12.0), affine)


def test_identical_masks_are_a_perfect_match(sphere):
    result = compare_labelmaps(sphere, sphere)
    liver = result[ORGANS[0].name]
    assert liver["status"] == COMPARED
    assert liver["dice"] == 1.0 and liver["nsd"] == 1.0
    assert liver["hd"] == liver["hd95"] == liver["assd"] == 0.0
    assert liver["volume_diff_ml"] == 0.0
    assert liver["volume_pred_ml"] == pytest.approx(int((sphere.array == LIVER).sum()) * 0.7 * 0.7 * 2.5 / 1000)


def test_every_organ_is_reported_with_every_metric(sphere):
    result = compare_labelmaps(sphere, sphere)
    assert list(result) == list(ORGAN_NAMES)
    for entry in result.values():
        assert set(METRICS) | {"status", "nsd_tolerance_mm"} == set(entry)


@pytest.mark.parametrize("axis, voxels", [(0, 3), (0, 10), (1, 7), (2, 1), (2, 3)])
def test_a_sphere_shifted_along_a_grid_axis_has_hausdorff_equal_to_the_shift(sphere, axis, voxels):
    # A shift by whole voxels makes the digital ball an exact translate: every surfel has its
    # image at exactly the shift d, so HD <= d; the flat cap that leads the shift has its
    # nearest surfels on the other ball's cap, d behind it, so HD = d exactly.
    shift_mm = voxels * ANISOTROPIC[axis]
    moved = sphere.with_array(np.roll(sphere.array, voxels, axis=axis))
    liver = compare_labelmaps(moved, sphere)["liver"]
    assert liver["hd"] == pytest.approx(shift_mm, abs=1e-9)
    assert 0.0 < liver["assd"] < liver["hd95"] <= liver["hd"] + 1e-9
    assert liver["volume_diff_ml"] == 0.0
    assert 0.0 < liver["dice"] < 1.0


@pytest.mark.parametrize("shift_mm", [(2.0, 1.5, 3.0), (0.0, 0.0, 4.0), (-3.3, 0.4, -1.2)])
def test_a_sphere_shifted_off_the_grid_has_hausdorff_within_a_voxel_diagonal_of_the_shift(shift_mm):
    # Each digital surface lies within half a voxel diagonal |s|/2 of the true sphere (a surfel
    # corner is within |s|/2 of the centres of its 2x2x2 cell, and the true surface passes between
    # an inside and an outside centre there), so two discretisations move HD by at most |s|.
    affine = grid_affine(ANISOTROPIC)
    centre = np.array([28.0, 28.0, 37.5])
    reference = Image(ball(SHAPE, affine, centre, 12.0), affine)
    prediction = Image(ball(SHAPE, affine, centre + shift_mm, 12.0), affine)
    shift = float(np.linalg.norm(shift_mm))
    hd = compare_labelmaps(prediction, reference)["liver"]["hd"]
    assert abs(hd - shift) <= float(np.linalg.norm(ANISOTROPIC))


def test_hausdorff_sees_a_far_fragment_that_hd95_ignores(sphere):
    # A 2x2x1-voxel fragment 38 mm from the ball along i: HD jumps to about that gap, HD95 does not.
    array = sphere.array.copy()
    array[78:80, 39:41, 15] = LIVER
    liver = compare_labelmaps(sphere.with_array(array), sphere)["liver"]
    gap_mm = (78 - 57) * 0.7  # the ball ends at i = 57 (28 + 12 mm at 0.7 mm)
    assert gap_mm - 1.0 <= liver["hd"] <= gap_mm + 1.0
    assert liver["hd95"] == 0.0


def test_box_volumes_are_voxel_counts_times_the_voxel_volume():
    affine = grid_affine(ANISOTROPIC, origin=(-10.0, 5.0, 100.0))
    prediction = np.zeros((30, 30, 12), np.uint8)
    reference = np.zeros_like(prediction)
    prediction[2:12, 3:23, 4:8] = SPLEEN  # 10 x 20 x 4 voxels of 1.225 mm^3
    reference[2:12, 3:23, 4:10] = SPLEEN  # 10 x 20 x 6
    spleen = compare_labelmaps(Image(prediction, affine), Image(reference, affine))["spleen"]
    assert spleen["volume_pred_ml"] == pytest.approx(800 * 1.225 / 1000)
    assert spleen["volume_ref_ml"] == pytest.approx(1200 * 1.225 / 1000)
    assert spleen["volume_diff_ml"] == pytest.approx(-400 * 1.225 / 1000)
    assert spleen["dice"] == pytest.approx(2 * 800 / 2000)
    assert spleen["hd"] == pytest.approx(2 * 2.5)  # the reference's top face is two 2.5 mm slices higher


def test_both_empty_is_not_applicable_and_still_reported(sphere):
    kidney = compare_labelmaps(sphere, sphere)["right_kidney"]
    assert kidney["status"] == BOTH_EMPTY
    assert all(kidney[key] is None for key in ("dice", "nsd", "hd", "hd95", "assd"))
    assert kidney["volume_pred_ml"] == kidney["volume_ref_ml"] == kidney["volume_diff_ml"] == 0.0


@pytest.mark.parametrize("empty_side", ["prediction", "reference"])
def test_one_side_empty_is_the_worst_case(sphere, empty_side):
    empty = sphere.with_array(np.zeros_like(sphere.array))
    prediction, reference = (empty, sphere) if empty_side == "prediction" else (sphere, empty)
    liver = compare_labelmaps(prediction, reference)["liver"]
    assert liver["status"] == (PREDICTION_EMPTY if empty_side == "prediction" else REFERENCE_EMPTY)
    assert liver["dice"] == 0.0 and liver["nsd"] == 0.0
    assert all(math.isinf(liver[key]) for key in DISTANCES)
    volume = int((sphere.array == LIVER).sum()) * sphere.voxel_volume_ml
    assert liver["volume_pred_ml" if empty_side == "reference" else "volume_ref_ml"] == pytest.approx(volume)
    sign = 1 if empty_side == "reference" else -1
    assert liver["volume_diff_ml"] == pytest.approx(sign * volume)


def test_json_writes_infinity_as_the_string_inf_and_not_applicable_as_null(sphere):
    empty = sphere.with_array(np.zeros_like(sphere.array))
    text = json.dumps(jsonable(compare_labelmaps(empty, sphere)), allow_nan=False)
    loaded = json.loads(text)
    assert loaded["liver"]["hd"] == loaded["liver"]["hd95"] == loaded["liver"]["assd"] == "inf"
    assert loaded["liver"]["dice"] == 0.0 and loaded["liver"]["status"] == PREDICTION_EMPTY
    assert loaded["spleen"]["hd"] is None and loaded["spleen"]["status"] == BOTH_EMPTY
    assert float(loaded["liver"]["hd"]) == math.inf


def test_a_reference_stored_in_another_voxel_order_is_refused_until_it_is_resampled(sphere):
    # The same voxels stored with axes permuted (k, i, j) and i and k flipped: a different
    # affine and array, the same world content. The metrics refuse it; resampled where it
    # enters (as the compare command does), the comparison is perfect.
    array = np.flip(sphere.array, axis=(0, 2)).transpose(2, 0, 1)
    i_size, _, k_size = sphere.shape
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, i_size - 1
    flip[2, 2], flip[2, 3] = -1.0, k_size - 1
    permute = np.zeros((4, 4))
    permute[0, 1] = permute[1, 2] = permute[2, 0] = permute[3, 3] = 1.0  # new (a, b, c) -> old (b, c, a)
    stored = Image(np.ascontiguousarray(array), sphere.affine @ flip @ permute)
    with pytest.raises(ValueError, match=r"one grid, but their shapes differ: \(80, 80, 30\) and \(30, 80, 80\)"):
        compare_labelmaps(sphere, stored)
    liver = compare_labelmaps(sphere, labels_onto_grid(stored, sphere))["liver"]
    assert liver["dice"] == 1.0 and liver["hd"] == 0.0


def test_labelmaps_on_two_grids_of_one_shape_are_refused_naming_the_affines():
    affine = grid_affine(ANISOTROPIC)
    labels = Image(ball(SHAPE, affine, (28.0, 28.0, 37.5), 12.0), affine)
    moved = Image(labels.array, grid_affine(ANISOTROPIC, origin=(0.0, 0.5, 0.0)))  # half a millimetre along y
    with pytest.raises(ValueError, match=r"affines differ \(by 0\.5 at most"):
        compare_labelmaps(labels, moved)
    # Rounding in a file header (float32) is no other grid.
    rounded = Image(labels.array, grid_affine(ANISOTROPIC, origin=(1e-5, 0.0, 0.0)))
    assert compare_labelmaps(labels, rounded)["liver"]["dice"] == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice_per_organ(labels.array, labels.array[:-1])


def test_a_reference_on_another_grid_agrees_once_resampled_onto_the_prediction():
    # The same 12 mm ball drawn on a 1.0 x 1.25 x 1.0 mm grid with a flipped j axis and another
    # origin: after nearest-neighbour resampling (io.regrid, as at the command line's edge) the
    # two agree to within about a voxel.
    centre = (28.0, 28.0, 37.5)
    prediction_affine = grid_affine(ANISOTROPIC)
    prediction = Image(ball(SHAPE, prediction_affine, centre, 12.0), prediction_affine)
    reference_affine = grid_affine((1.0, -1.25, 1.0), origin=(3.0, 60.0, 10.0))
    reference = Image(ball((60, 50, 60), reference_affine, centre, 12.0), reference_affine)
    liver = compare_labelmaps(prediction, labels_onto_grid(reference, prediction))["liver"]
    assert liver["dice"] > 0.9
    assert liver["hd"] <= float(np.linalg.norm(ANISOTROPIC))
    assert liver["volume_ref_ml"] == pytest.approx(4 / 3 * math.pi * 12.0**3 / 1000, rel=0.1)
    assert liver["volume_pred_ml"] == pytest.approx(liver["volume_ref_ml"], rel=0.1)


def test_tolerances_override_the_flare22_defaults(sphere):
    moved = sphere.with_array(np.roll(sphere.array, 3, axis=2))  # 7.5 mm along k
    default = compare_labelmaps(moved, sphere)["liver"]
    assert default["nsd_tolerance_mm"] == NSD_TOLERANCE_MM["liver"] == 5.0
    assert 0.0 < default["nsd"] < 1.0
    wide = compare_labelmaps(moved, sphere, tolerances={"liver": 8.0})["liver"]
    assert wide["nsd"] == 1.0 and wide["nsd_tolerance_mm"] == 8.0
    with pytest.raises(ValueError, match="unknown organs"):
        compare_labelmaps(moved, sphere, tolerances={"pancreas": 2.0})


def test_nsd_defaults_cover_every_organ_as_in_flare22():
    assert NSD_TOLERANCE_MM == {"liver": 5.0, "right_kidney": 3.0, "left_kidney": 3.0, "spleen": 3.0}


def test_dice_helpers_used_by_the_demo_and_training_still_work(sphere):
    moved = np.roll(sphere.array, 2, axis=0)
    assert dice(sphere.array == LIVER, sphere.array == LIVER) == 1.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) is None
    per_organ = dice_per_organ(moved, sphere.array)
    assert per_organ["liver"] == pytest.approx(compare_labelmaps(sphere.with_array(moved), sphere)["liver"]["dice"])
    assert per_organ["spleen"] is None


# --------------------------------------------------------------- agreement with surface-distance


def random_blob(shape, seed: int, threshold: float) -> np.ndarray:
    """A smooth random blob (boolean): thresholded, smoothed noise; a few lumps, some holes."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    smooth = ndimage.gaussian_filter(noise, sigma=(4.0, 4.0, 2.0))
    return smooth > threshold * smooth.std()


def surface_distance_metrics(reference_mask, prediction_mask, spacing, tolerance_mm) -> dict[str, float]:
    """HD, HD95, ASSD, NSD and Dice of two boolean masks as surface-distance computes them."""
    distances = surface_distance.compute_surface_distances(reference_mask, prediction_mask, spacing)
    to_pred, to_ref = surface_distance.compute_average_surface_distance(distances)
    ref_area, pred_area = distances["surfel_areas_gt"].sum(), distances["surfel_areas_pred"].sum()
    return {
        "hd": surface_distance.compute_robust_hausdorff(distances, 100),
        "hd95": surface_distance.compute_robust_hausdorff(distances, 95),
        "assd": (to_pred * ref_area + to_ref * pred_area) / (ref_area + pred_area),
        "nsd": surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm),
        "dice": surface_distance.compute_dice_coefficient(reference_mask, prediction_mask),
    }


def assert_agrees_with_surface_distance(reference_mask, prediction_mask, spacing) -> dict:
    """Our metrics of the two masks (as one organ) equal surface-distance's to rounding; returns ours."""
    label = ORGANS[1].label
    affine = grid_affine(spacing, origin=(-20.0, 13.0, 400.0))
    ours = compare_labelmaps(
        Image(np.where(prediction_mask, label, 0).astype(np.uint8), affine),
        Image(np.where(reference_mask, label, 0).astype(np.uint8), affine),
    )[ORGANS[1].name]
    theirs = surface_distance_metrics(reference_mask, prediction_mask, spacing, ours["nsd_tolerance_mm"])
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    return ours


@pytest.mark.parametrize(
    "seed, spacing",
    [(1, (0.7, 0.7, 2.5)), (2, (0.7, 0.7, 2.5)), (3, (1.0, 0.8, 1.5)), (4, (2.0, 0.6, 0.9)), (5, (1.0, 1.0, 1.0))],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # surface-distance uses scipy.ndimage.filters / morphology
def test_agrees_with_deepmind_surface_distance_on_random_masks(seed, spacing):
    shape = (56, 48, 28)
    reference_mask = random_blob(shape, seed, 0.5)
    prediction_mask = reference_mask ^ random_blob(shape, seed + 100, 1.6)  # the reference with lumps added and removed
    assert reference_mask.sum() > 1000 and prediction_mask.sum() > 1000 and (reference_mask != prediction_mask).sum() > 100
    ours = assert_agrees_with_surface_distance(reference_mask, prediction_mask, spacing)
    assert ours["hd"] > 0 and 0 < ours["nsd"] < 1


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 2.5), (2.0, 0.6, 0.9)])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_agrees_with_deepmind_surface_distance_on_speckle_that_holds_every_neighbourhood_code(spacing):
    # Voxels drawn at random, one in two: every one of the 256 2x2x2 neighbourhood codes occurs,
    # the ambiguous ones (two diagonal corners of a face inside, two outside) included.
    rng = np.random.default_rng(11)
    reference_mask, prediction_mask = rng.random((2, 24, 20, 12)) < 0.5
    assert len(np.unique(surfels.surfel_codes(reference_mask)[1])) == 256
    assert_agrees_with_surface_distance(reference_mask, prediction_mask, spacing)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.8, 2.5), (2.0, 0.6, 0.9), (0.3, 5.0, 1.1)])
def test_surfel_areas_equal_the_table_of_surface_distance(spacing):
    ours = surfels.surfel_areas(spacing)
    theirs = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    assert ours.shape == (256,)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(surfels.NEIGHBOURHOOD_KERNEL, lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_distances_do_not_depend_on_the_sign_of_the_axes():
    shape = (40, 40, 20)
    reference_mask = random_blob(shape, 7, 0.4)
    prediction_mask = reference_mask ^ random_blob(shape, 8, 1.5)
    spacing = (0.8, 0.8, 2.0)
    results = []
    for signs in ((1, 1, 1), (-1, 1, -1)):
        affine = grid_affine(np.multiply(signs, spacing))
        results.append(
            compare_labelmaps(Image(prediction_mask.astype(np.uint8), affine), Image(reference_mask.astype(np.uint8), affine))["liver"]
        )
    for key in ("hd", "hd95", "assd", "nsd"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-12)
