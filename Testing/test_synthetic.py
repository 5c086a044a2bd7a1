"""Synthetic CT: scanner effects on painted tissue, and bowel painted as bowel on the TotalSegmentator
map s0328 (the generator on 3D-IRCADb-01 maps is tested in Testing/validate/test_synthetic_on_shared_maps.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from abdoseg_train.anatomy import discover_anatomy, load_anatomy
from abdoseg_train.bowel import FAECES_HU, GAS_HU
from abdoseg_train.structures import STRUCTURE_IDS
from abdoseg_train.synthetic import TISSUES, paint, synthesise
from AbdoSegLib.model.preprocessing import Preprocessing

S0328 = Path(__file__).resolve().parent / "Data" / "anatomy_totalseg" / "s0328_anatomy.nii.gz"
BOWEL, STOMACH = STRUCTURE_IDS["bowel"], STRUCTURE_IDS["stomach"]


@pytest.fixture(scope="module")
def s0328():
    return load_anatomy(discover_anatomy(S0328)[0], Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0)))


def test_scanner_effects_blur_and_add_noise_without_moving_tissue_means():
    structures = np.full((40, 40, 40), STRUCTURE_IDS["liver"], dtype=np.uint8)
    structures[:, :, :20] = STRUCTURE_IDS["spleen"]
    depth = np.full(structures.shape, 100, dtype=np.uint8)
    painted = paint(structures, depth, np.random.default_rng(3), phase="portal_venous", random_phase=0.0)
    scanned = synthesise(structures, depth, 3.0, np.random.default_rng(3), phase="portal_venous", random_phase=0.0)
    inner = (slice(5, 35), slice(5, 35))
    for z in (slice(3, 15), slice(25, 37)):
        assert abs(np.median(scanned[inner + (z,)]) - np.median(painted[inner + (z,)])) < 25  # bias field <= 20 HU
    assert not np.allclose(scanned, painted)


def test_bowel_is_painted_as_wall_gas_and_contents_and_the_stomach_has_a_gas_cap_in_front(s0328):
    """In every phase s0328's bowel spans gas to the enhancing wall, with fluid or faeces between;
    the stomach's gas lies in front of its fluid (axis 1 runs to the front); labels do not change."""
    labels = s0328.labels.copy()
    for seed, phase in enumerate(("portal_venous", "arterial", "unenhanced")):
        hu = paint(s0328.structures, s0328.depth_mm, np.random.default_rng(seed), phase=phase, random_phase=0.0)
        bowel = hu[s0328.structures == BOWEL]
        assert 0.02 < np.mean(bowel < GAS_HU[1]) < 0.6
        wall_low = TISSUES[BOWEL].mean_hu[phase][0] - 2 * TISSUES[BOWEL].spread_hu[1]
        assert np.mean(bowel > wall_low) > 0.2  # the wall: a 1-2 voxel shell of loops ~4-6 voxels wide
        assert np.mean((bowel > FAECES_HU[0]) & (bowel < 50)) > 0.1  # fluid and faeces
        stomach = s0328.structures == STOMACH
        front = np.nonzero(stomach)[1]
        gas = hu[stomach] < GAS_HU[1]
        if gas.any():
            assert front[gas].mean() > front[~gas].mean() + 2
    np.testing.assert_array_equal(s0328.labels, labels)
