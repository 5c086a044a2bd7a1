"""Lungs and heart drawn into a real 3D-IRCADb-01 anatomy map whose chest is left inside body_other."""

from __future__ import annotations

import numpy as np
import pytest

from abdoseg_train.anatomy import discover_anatomy, load_anatomy
from abdoseg_train.structures import STRUCTURE_IDS
from abdoseg_train.synthetic import PHASES, TISSUES, paint
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.preprocessing import Preprocessing, labels_to_model_grid, model_grid

SPEC = Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0))
BODY, LIVER, LUNG, HEART = STRUCTURE_IDS["body_other"], STRUCTURE_IDS["liver"], STRUCTURE_IDS["lung"], STRUCTURE_IDS["heart"]
CHEST_MAP = "ircad_19"  # its scan reaches 220 mm above the liver, with no lung labelled


@pytest.fixture(scope="module")
def chest_source(anatomy_dir):
    return discover_anatomy(anatomy_dir / f"{CHEST_MAP}_anatomy.nii.gz")[0]


def test_a_real_map_gets_a_heart_and_lungs_and_keeps_its_labels(chest_source):
    case = load_anatomy(chest_source, SPEC)
    detail = read_image(chest_source.detail)
    raw = labels_to_model_grid(detail, model_grid(detail, SPEC.spacing_mm))
    changed = case.structures != raw
    assert np.all(raw[changed] == BODY)
    heart_ml = np.sum(case.structures == HEART) * 27 / 1000
    lung_ml = np.sum(case.structures == LUNG) * 27 / 1000
    assert 150 < heart_ml < 900 and lung_ml > 1000  # adult heart ~ 250-700 mL; the scan reaches the apices
    target = read_image(chest_source.target)
    expected = labels_to_model_grid(target, model_grid(target, SPEC.spacing_mm))
    expected[expected > 4] = 0
    np.testing.assert_array_equal(case.labels, expected)
    # The heart lies above the top of the liver in every column they share.
    liver_top = np.where(case.structures == LIVER, np.arange(case.structures.shape[2]), -1).max(axis=2)
    heart_bottom = np.where(case.structures == HEART, np.arange(case.structures.shape[2]), 10_000).min(axis=2)
    shared = (liver_top >= 0) & (heart_bottom < 10_000)
    assert shared.any() and np.all(heart_bottom[shared] > liver_top[shared])


@pytest.mark.parametrize("phase", PHASES)
def test_the_heart_is_painted_as_blood_of_its_phase(chest_source, phase):
    case = load_anatomy(chest_source, SPEC)
    hu = paint(case.structures, case.depth_mm, np.random.default_rng(5), phase=phase, random_phase=0.0)
    low, high = TISSUES[HEART].mean_hu[phase]
    spread = TISSUES[HEART].spread_hu[1]
    assert low - spread <= float(np.median(hu[case.structures == HEART])) <= high + spread
    assert float(np.median(hu[case.structures == LUNG])) < -700
