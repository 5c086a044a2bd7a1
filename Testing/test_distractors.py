"""Distractors drawn into one patch's structure map: cysts and masses beside the organs, labelled
background, and lesions inside them, labelled as the organ; organs grown into the body around them
or shrunk (on the TotalSegmentator map s0328)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from abdoseg_train.anatomy import discover_anatomy, load_anatomy
from abdoseg_train.distractors import CYST, GAP_MM, HOSTS, LESIONS, MASS, add_distractors
from abdoseg_train.organ_size import BODY, VOLUME_FACTORS, scale_organ
from abdoseg_train.synthetic import TISSUES, paint
from AbdoSegLib.model.preprocessing import Preprocessing

S0328 = Path(__file__).resolve().parent / "Data" / "anatomy_totalseg" / "s0328_anatomy.nii.gz"


@pytest.fixture(scope="module")
def s0328():
    return load_anatomy(discover_anatomy(S0328)[0], Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0)))


def test_distractors_lie_beside_the_organs_labelled_background_with_their_own_hu(s0328):
    structures, labels = s0328.structures.copy(), s0328.labels.copy()
    distance = ndimage.distance_transform_edt(labels == 0, sampling=3.0)
    kinds = set()
    for seed in range(6):
        drawn = add_distractors(s0328.structures, s0328.labels, 3.0, np.random.default_rng(seed), 1.0, 0.0)
        changed = drawn != structures
        assert changed.any() and np.isin(structures[changed], HOSTS).all() and np.isin(drawn[changed], (CYST, MASS)).all()
        assert (labels[changed] == 0).all()  # background
        pieces, count = ndimage.label(changed)
        for piece in range(1, count + 1):  # touching an organ, or up to GAP_MM (and a voxel) away
            assert distance[pieces == piece].min() <= GAP_MM + 3.0
        hu = paint(drawn, s0328.depth_mm, np.random.default_rng(seed), phase="portal_venous", random_phase=0.0)
        for kind in (CYST, MASS):
            if (drawn == kind).any():
                kinds.add(kind)
                low, high = TISSUES[kind].mean_hu["portal_venous"]
                assert low - TISSUES[kind].spread_hu[1] <= hu[drawn == kind].mean() <= high + TISSUES[kind].spread_hu[1]
    assert kinds == {CYST, MASS}
    np.testing.assert_array_equal(s0328.structures, structures)  # the cached map is untouched
    np.testing.assert_array_equal(s0328.labels, labels)


def test_lesions_lie_inside_the_organs_and_keep_their_label(s0328):
    drawn = add_distractors(s0328.structures, s0328.labels, 3.0, np.random.default_rng(1), 0.0, 1.0)
    changed = drawn != s0328.structures
    assert changed.any() and np.isin(drawn[changed], LESIONS).all()
    assert (s0328.labels[changed] == s0328.structures[changed]).all() and (s0328.labels[changed] > 0).all()


def test_nothing_is_drawn_where_the_patch_has_no_organ(s0328):
    empty = np.zeros_like(s0328.labels)
    np.testing.assert_array_equal(add_distractors(s0328.structures, empty, 3.0, np.random.default_rng(0), 1.0, 1.0), s0328.structures)


def test_an_organ_grows_only_into_the_unlabelled_body_or_shrinks_with_structures_and_labels_together(s0328):
    factors = {}
    for seed in range(8):
        structures, labels = scale_organ(s0328.structures, s0328.labels, np.random.default_rng(seed), 1.0)
        changed = labels != s0328.labels
        organ = int(np.unique(np.r_[labels[changed], s0328.labels[changed]]).max())  # the one scaled
        assert set(np.unique(np.r_[labels[changed], s0328.labels[changed]])) <= {0, organ}
        grown, lost = changed & (labels == organ), changed & (s0328.labels == organ)
        assert (s0328.structures[grown] == BODY).all() and (structures[grown] == organ).all()
        assert (structures[lost] == BODY).all()
        np.testing.assert_array_equal(structures[~changed], s0328.structures[~changed])
        factor = (labels == organ).sum() / (s0328.labels == organ).sum()
        low, high = VOLUME_FACTORS[organ]
        assert low - 0.01 <= factor <= high + 0.01
        factors[organ] = factors.get(organ, []) + [factor]
    assert len(factors) >= 3 and any(f < 0.95 for fs in factors.values() for f in fs) and any(f > 1.05 for fs in factors.values() for f in fs)


def test_a_one_voxel_organ_gets_a_distractor_beside_it():
    """Its only surface point is its centroid: the blob goes in a random direction instead of nowhere (NaN)."""
    structures = np.full((24, 24, 24), HOSTS[0], dtype=np.uint8)
    labels = np.zeros_like(structures)
    labels[12, 12, 12] = structures[12, 12, 12] = 1
    with np.errstate(invalid="raise", divide="raise"):
        drawn = add_distractors(structures, labels, 3.0, np.random.default_rng(0), 1.0, 0.0)
    assert np.isin(drawn, (CYST, MASS)).any() and drawn[12, 12, 12] == 1
