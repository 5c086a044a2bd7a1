"""Not found, never drawn: the presence decision on exactly-known probabilities, and the default model on
crops of the sample CT with and without each organ (thresholds measured in inference/presence.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AbdoSegLib.analysis.metrics import dice_per_organ
from AbdoSegLib.analysis.qa import LOW_CONFIDENCE
from AbdoSegLib.image import Image
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.inference.presence import (
    FOUND,
    MAX_MEDIAN_HU,
    MIN_CONFIDENCE,
    MIN_FRAGMENT_VOXELS,
    MIN_WHOLE_VOLUME_ML,
    NEVER_ALONE,
    NOT_FOUND,
    UNDER_THE_LIVER,
    decide_presence,
    outside_field,
)
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.preprocessing import model_grid
from AbdoSegLib.organs import NUM_CLASSES, ORGAN_NAMES, organ_by_name
from AbdoSegLib.resources import SAMPLE_REFERENCE
from conftest import crop, voxel_world

SHAPE = (48, 48, 48)
LIVER, RIGHT_KIDNEY, LEFT_KIDNEY, SPLEEN = (organ_by_name(n).label for n in ("liver", "right_kidney", "left_kidney", "spleen"))


def _ball(centre, radius) -> np.ndarray:
    return np.linalg.norm(np.indices(SHAPE).transpose(1, 2, 3, 0) - np.array(centre), axis=-1) <= radius


def _drawn(blobs: dict[int, tuple[np.ndarray, float]]) -> tuple[torch.Tensor, np.ndarray]:
    """(C, X, Y, Z) probabilities and (X, Y, Z) labels: organ ``label`` with probability p inside its mask, background the rest."""
    probabilities = np.zeros((NUM_CLASSES, *SHAPE), np.float32)
    probabilities[0] = 1.0
    labels = np.zeros(SHAPE, np.uint8)
    for label, (mask, p) in blobs.items():
        probabilities[label][mask], probabilities[0][mask] = p, 1.0 - p
        labels[mask] = label
    return torch.from_numpy(probabilities), labels


def test_small_or_uncertain_organs_are_dropped_and_a_confident_fragment_at_the_edge_is_kept():
    liver = _ball((14, 24, 24), 10)  # 4169 voxels of 0.1 mL: 417 mL, inside the field of view
    uncertain = _ball((36, 12, 12), 2)  # a few mL, p = 0.6
    small = _ball((36, 36, 36), 3)  # 12 mL wholly inside: no whole kidney is that small, however confident
    fragment = _ball((47, 24, 24), 4)  # a half ball on the last x face: a spleen cut by the edge
    probabilities, labels = _drawn({LIVER: (liver, 0.97), RIGHT_KIDNEY: (uncertain, 0.6), LEFT_KIDNEY: (small, 0.99), SPLEEN: (fragment, 0.95)})
    before = labels.copy()
    kept, decisions = decide_presence(probabilities, labels, 0.1)
    np.testing.assert_array_equal(labels, before)  # the input is not changed
    np.testing.assert_array_equal(kept, np.where(liver, LIVER, 0) + np.where(fragment, SPLEEN, 0))
    assert list(decisions) == list(ORGAN_NAMES)

    found = decisions["liver"]
    assert (found.status, found.reason, found.touches_edge) == (FOUND, None, False)
    assert found.confidence == pytest.approx(0.97, abs=1e-6) and found.volume_ml == pytest.approx(liver.sum() * 0.1)
    assert found.summary() == {"status": "found", "confidence": 0.97, "reason": None}

    dropped = decisions["right_kidney"]
    assert dropped.status == NOT_FOUND and dropped.confidence == pytest.approx(0.6, abs=1e-6)
    assert dropped.reason == f"what the network drew ({uncertain.sum() * 0.1:.0f} mL) has a confidence of 0.600, below the 0.90 required"
    assert dropped.summary() == {"status": "not found", "confidence": None, "reason": dropped.reason}

    too_small = decisions["left_kidney"]
    assert too_small.status == NOT_FOUND and not too_small.touches_edge
    assert too_small.reason == ("what the network drew (12 mL, confidence 0.990) lies wholly inside the scan "
                                "yet is smaller than the smallest plausible left kidney (50 mL)")

    cut = decisions["spleen"]
    assert cut.found and cut.touches_edge and cut.volume_ml < MIN_WHOLE_VOLUME_ML["spleen"]


@pytest.mark.parametrize("p, status", [(0.89, NOT_FOUND), (0.91, FOUND)])
def test_a_whole_organ_needs_the_minimum_confidence(p, status):
    probabilities, labels = _drawn({LIVER: (_ball((24, 24, 24), 10), p)})
    assert decide_presence(probabilities, labels, 0.1)[1]["liver"].status == status


@pytest.mark.parametrize("voxel_ml, at_edge, status", [(0.07, False, NOT_FOUND), (0.08, False, FOUND), (0.07, True, FOUND)])
def test_the_smallest_whole_organ_applies_only_inside_the_scan(voxel_ml, at_edge, status):
    """A 4169-voxel liver: 292 mL at 0.07 mL a voxel, 334 mL at 0.08, against the 300 mL of the smallest plausible liver."""
    liver = _ball((24, 24, 24), 10)
    if at_edge:
        liver = np.roll(liver, 23, axis=2)  # the same ball wrapped onto both z faces: still 4169 voxels
    probabilities, labels = _drawn({LIVER: (liver, 0.97)})
    decision = decide_presence(probabilities, labels, voxel_ml)[1]["liver"]
    assert (decision.status, decision.touches_edge) == (status, at_edge)


@pytest.mark.parametrize("voxels, status", [(MIN_FRAGMENT_VOXELS - 1, NOT_FOUND), (MIN_FRAGMENT_VOXELS, FOUND)])
def test_a_fragment_at_the_edge_needs_a_few_voxels(voxels, status):
    """A confident (0.95) kidney of a few voxels in a row on the first x face: 7 voxels are noise, 8 a fragment."""
    kidney = np.zeros(SHAPE, bool)
    kidney[0, 20, 20:20 + voxels] = True
    probabilities, labels = _drawn({RIGHT_KIDNEY: (kidney, 0.95)})
    decision = decide_presence(probabilities, labels, 0.027)[1]["right_kidney"]
    assert decision.touches_edge and decision.status == status
    if status == NOT_FOUND:
        assert decision.reason == "what the network drew (0.19 mL, confidence 0.950) is 7 model voxels, fewer than the 8 the model can resolve"


def test_an_organ_denser_than_any_parenchyma_is_bone_not_found():
    """A confident 417 mL kidney-shaped blob: a third of it at 350 HU and the rest at 300 (median 300, at the
    limit: found, as a kidney whose cortex or collecting system enhances), then two thirds at 350 (median 350:
    not found)."""
    kidney = _ball((24, 24, 24), 10)
    probabilities, labels = _drawn({LEFT_KIDNEY: (kidney, 0.96)})
    hu = np.full(SHAPE, 40.0, np.float32)
    order = np.flatnonzero(kidney.ravel())
    hu.ravel()[order] = 300.0
    hu.ravel()[order[: len(order) // 3]] = 350.0
    assert float(np.median(hu[kidney])) == MAX_MEDIAN_HU == 300.0
    assert decide_presence(probabilities, labels, 0.1, hu=hu)[1]["left_kidney"].found
    hu.ravel()[order[: 2 * len(order) // 3]] = 350.0
    decision = decide_presence(probabilities, labels, 0.1, hu=hu)[1]["left_kidney"]
    assert decision.status == NOT_FOUND
    assert decision.reason == ("what the network drew (417 mL, confidence 0.960) has a median of 350 HU, "
                               "denser than any left kidney tissue (300 HU): bone")
    assert decide_presence(probabilities, labels, 0.1)[1]["left_kidney"].found  # no HU given: density not judged


def test_a_spleen_is_not_found_when_no_other_organ_is():
    """A confident 301 mL spleen is found beside a kidney, and not found alone (reason given, not drawn)."""
    assert NEVER_ALONE == ("spleen",)
    spleen, kidney = _ball((40, 24, 24), 9), _ball((12, 24, 24), 6)  # 3013 and 925 voxels of 0.1 mL
    alone, alone_decisions = decide_presence(*_drawn({SPLEEN: (spleen, 0.95)}), 0.1)
    assert alone_decisions["spleen"].status == NOT_FOUND and not alone.any()
    assert alone_decisions["spleen"].reason == ("what the network drew (301 mL, confidence 0.950) is the only organ found, "
                                                "and a scan through the spleen shows the liver or a kidney too")
    kept, decisions = decide_presence(*_drawn({SPLEEN: (spleen, 0.95), LEFT_KIDNEY: (kidney, 0.97)}), 0.1)
    assert decisions["spleen"].found and decisions["left_kidney"].found
    np.testing.assert_array_equal(kept, np.where(spleen, SPLEEN, 0) + np.where(kidney, LEFT_KIDNEY, 0))
    _, with_absent_kidney = decide_presence(*_drawn({SPLEEN: (spleen, 0.95), LEFT_KIDNEY: (kidney, 0.6)}), 0.1)
    assert with_absent_kidney["spleen"].status == NOT_FOUND  # a kidney drawn but not found is no company


def test_a_kidney_or_spleen_cut_by_the_lowest_slice_needs_the_liver_found():
    """Half balls on the lowest slice (z = 0, RAS): the scan runs upward from their cut, so it would hold
    the liver. Without a liver they are not found; with one, cut by the highest slice instead, or by a side
    of the scan as well, found."""
    assert UNDER_THE_LIVER == ("right_kidney", "left_kidney", "spleen")
    kidney, spleen = _ball((12, 24, 0), 8), _ball((36, 24, 0), 8)  # 1-mL voxels: 1153 mL each, cut at z = 0
    liver = _ball((24, 24, 30), 10)
    without, decisions = decide_presence(*_drawn({LEFT_KIDNEY: (kidney, 0.95), SPLEEN: (spleen, 0.96)}), 1.0)
    assert not without.any() and [d.status for d in decisions.values()] == [NOT_FOUND] * 4
    assert decisions["left_kidney"].reason == ("what the network drew (1153 mL, confidence 0.950) is cut by the scan's lowest slice, "
                                               "so the scan runs up past the left kidney's upper pole, yet no liver is found there")
    with_liver = decide_presence(*_drawn({LEFT_KIDNEY: (kidney, 0.95), SPLEEN: (spleen, 0.96), LIVER: (liver, 0.97)}), 1.0)[1]
    assert all(d.found for name, d in with_liver.items() if name != "right_kidney")
    from_above = decide_presence(*_drawn({LEFT_KIDNEY: (kidney[..., ::-1], 0.95), SPLEEN: (spleen[..., ::-1], 0.96)}), 1.0)[1]
    assert from_above["left_kidney"].found and from_above["spleen"].found  # a scan that starts below the liver
    lateral = _ball((40, 24, 0), 8)  # also cut by the last x face: a crop of one side, which may leave the liver out
    assert decide_presence(*_drawn({LEFT_KIDNEY: (lateral, 0.95)}), 1.0)[1]["left_kidney"].found


def test_a_small_organ_at_the_rim_of_a_circular_field_of_view_is_a_fragment():
    """Beyond a cylinder of radius 20 voxels the scanner padded the image: a 12 mL kidney touching that rim
    is cut by the field of view (kept), the same kidney without the padding is too small to be whole."""
    x, y = np.indices(SHAPE[:2])
    outside = np.broadcast_to((np.hypot(x - 23.5, y - 23.5) > 20)[..., None], SHAPE)
    kidney = _ball((40, 24, 24), 3)  # reaches x = 43, the rim lies at x = 43.5
    assert not (kidney & outside).any()
    probabilities, labels = _drawn({RIGHT_KIDNEY: (kidney, 0.97)})
    cut = decide_presence(probabilities, labels, 0.1, outside)[1]["right_kidney"]
    assert cut.found and cut.touches_edge
    assert decide_presence(probabilities, labels, 0.1)[1]["right_kidney"].status == NOT_FOUND


def test_the_padding_of_a_circular_field_of_view_is_found_on_the_model_grid(ts_dicom_ct, ts_example_ct):
    """ts_dicom (512 x 512 voxels of 0.98 mm, LPS order) padded with -3024 HU beyond 180 mm of its centre."""
    assert outside_field(ts_dicom_ct, model_grid(ts_dicom_ct, (3.0, 3.0, 3.0))) is None
    assert outside_field(ts_example_ct, model_grid(ts_example_ct, (3.0, 3.0, 3.0))) is None  # one noisy voxel below -1100 HU
    world = voxel_world(ts_dicom_ct.affine, ts_dicom_ct.shape[:2] + (1,))[..., 0, :2]
    centre = world.reshape(-1, 2).mean(axis=0)
    array = ts_dicom_ct.array.copy()
    array[np.linalg.norm(world - centre, axis=-1) > 180.0] = -3024
    grid = model_grid(ts_dicom_ct, (3.0, 3.0, 3.0))
    outside = outside_field(ts_dicom_ct.with_array(array), grid)
    assert outside.shape == grid.shape
    radius = np.linalg.norm(voxel_world(grid.affine, grid.shape)[..., :2] - centre, axis=-1)
    assert outside[radius > 183.0].all() and not outside[radius < 177.0].any()


def test_an_organ_the_network_does_not_draw_is_not_found():
    probabilities, labels = _drawn({})
    kept, decisions = decide_presence(probabilities, labels, 0.1)
    assert not kept.any()
    for name, decision in decisions.items():
        assert (decision.status, decision.confidence, decision.volume_ml) == (NOT_FOUND, None, 0.0)
        assert decision.reason == f"the network labelled no voxel as {organ_by_name(name).title.lower()}"


def test_the_qa_warns_above_the_not_found_threshold():
    assert MIN_CONFIDENCE < LOW_CONFIDENCE < 1.0


# --- the default model on crops of the sample CT (each about a second) ----------------------------------


@pytest.fixture(scope="module")
def sample_reference() -> Image:
    return read_image(SAMPLE_REFERENCE)


def _segment_crop(ct: Image, reference: Image, bundle, box) -> tuple:
    """(prediction, reference labels on the crop) for the sample cropped to ``box``."""
    return segment(crop(ct, box), bundle, device="cpu"), crop(reference, box).array


def test_a_liver_cut_by_the_edge_of_the_scan_is_kept(ts_example_ct, sample_reference, default_model_bundle):
    """The posterior 45 of 101 rows: 230 mL of liver, less than a whole liver may be; the model draws 205 mL
    (confidence 0.955) touching the cut, and all four organs are found."""
    prediction, reference = _segment_crop(ts_example_ct, sample_reference, default_model_bundle, np.s_[:, :45, :])
    liver = prediction.presence["liver"]
    assert liver.found and liver.touches_edge and liver.volume_ml < MIN_WHOLE_VOLUME_ML["liver"]
    assert all(decision.found for decision in prediction.presence.values())
    scores = dice_per_organ(prediction.labels.array, reference)
    assert min(scores.values()) > 0.85, scores  # measured: liver 0.92, kidneys 0.94, spleen 0.90


def test_the_tops_of_kidneys_cut_by_the_lower_edge_are_kept(ts_example_ct, sample_reference, default_model_bundle):
    """The top 17 slices: 23 and 32 mL of kidney, far below a whole kidney; kept because they touch the cut."""
    prediction, reference = _segment_crop(ts_example_ct, sample_reference, default_model_bundle, np.s_[:, :, 95:])
    scores = dice_per_organ(prediction.labels.array, reference)
    for name in ("right_kidney", "left_kidney"):
        decision = prediction.presence[name]
        assert decision.found and decision.touches_edge and decision.volume_ml < MIN_WHOLE_VOLUME_ML[name]
        assert scores[name] > 0.75, scores  # measured 0.83 and 0.87


def test_a_pelvis_only_crop_draws_no_organ(ts_example_ct, sample_reference, default_model_bundle):
    """The 60 slices below the kidneys (18 mm below their lower poles). abdoseg-vnet-0.9 draws up to 35 mL of
    an organ there (0.7: up to 107 mL) with confidences 0.62-0.77: all four are reported not found and
    nothing is drawn."""
    prediction, reference = _segment_crop(ts_example_ct, sample_reference, default_model_bundle, np.s_[:, :, :60])
    assert not reference.any()
    assert not prediction.labels.array.any()
    assert all(decision.status == NOT_FOUND for decision in prediction.presence.values())


def test_a_crop_with_one_kidney_draws_neither_the_other_kidney_nor_the_spleen(ts_example_ct, sample_reference, default_model_bundle):
    """The patient's right (x from voxel 62): liver and right kidney only. abdoseg-vnet-0.5 drew a 33 mL left
    kidney wholly inside the scan with confidence 0.93, not found as too small for a whole kidney;
    abdoseg-vnet-0.7 labels no left kidney there at all."""
    prediction, reference = _segment_crop(ts_example_ct, sample_reference, default_model_bundle, np.s_[62:, :, :])
    assert set(np.unique(reference)) == {0, LIVER, RIGHT_KIDNEY}
    assert set(np.unique(prediction.labels.array)) == {0, LIVER, RIGHT_KIDNEY}
    assert prediction.presence["left_kidney"].status == NOT_FOUND and prediction.presence["spleen"].status == NOT_FOUND
    scores = dice_per_organ(prediction.labels.array, reference)
    assert scores["liver"] > 0.9 and scores["right_kidney"] > 0.85, scores  # measured 0.93 and 0.91
