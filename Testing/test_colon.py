"""A colon drawn beside the kidneys of a patch whose map labels no bowel (``colon.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from abdoseg_train.anatomy import discover_anatomy, load_anatomy
from abdoseg_train.colon import BODY_OTHER, BOWEL, add_colon
from abdoseg_train.structures import STRUCTURE_IDS
from abdoseg_train.synthetic import paint
from AbdoSegLib.model.preprocessing import Preprocessing

S0328 = Path(__file__).resolve().parent / "Data" / "anatomy_totalseg" / "s0328_anatomy.nii.gz"
RIGHT, LEFT, MUSCLE = STRUCTURE_IDS["right_kidney"], STRUCTURE_IDS["left_kidney"], STRUCTURE_IDS["muscle"]


def _flanks() -> tuple[np.ndarray, np.ndarray]:
    """A 60^3 patch of 3 mm voxels (RAS: axis 0 to the patient's right): body, a right kidney at x 38-45, a left one
    at x 14-21, both at z 20-40, and a block of muscle beside the left kidney."""
    structures = np.full((60, 60, 60), BODY_OTHER, np.uint8)
    labels = np.zeros_like(structures)
    for label, xs in ((RIGHT, slice(38, 46)), (LEFT, slice(14, 22))):
        structures[xs, 20:32, 20:40] = labels[xs, 20:32, 20:40] = label
    structures[5:12, 20:32, 0:15] = MUSCLE
    return structures, labels


@pytest.mark.parametrize("seed", range(5))
def test_a_colon_runs_the_height_of_the_patch_beside_each_kidney_on_unclaimed_body_only(seed):
    structures, labels = _flanks()
    drawn = add_colon(structures, labels, 3.0, np.random.default_rng(seed), probability=1.0)
    changed = drawn != structures
    assert (structures[changed] == BODY_OTHER).all() and (drawn[changed] == BOWEL).all()  # nothing else is taken
    right, left = changed & (np.arange(60) >= 30)[:, None, None], changed & (np.arange(60) < 30)[:, None, None]
    assert np.argwhere(right)[:, 0].mean() > 45 and np.argwhere(left)[:, 0].mean() < 14  # lateral to each kidney
    assert right.any(axis=(0, 1)).all() and left.any(axis=(0, 1)).all()  # in every slice, above and below the kidneys
    np.testing.assert_array_equal(structures, _flanks()[0])  # the input map is not changed


def test_no_colon_where_the_map_has_bowel_beside_the_kidney_or_no_kidney_or_by_chance():
    structures, labels = _flanks()
    right_colon = structures.copy()
    right_colon[50:55, 20:30, :] = BOWEL  # the map's own colon beside the right kidney
    drawn = add_colon(right_colon, labels, 3.0, np.random.default_rng(0), 1.0)
    added = drawn != right_colon
    assert added.any() and np.argwhere(added)[:, 0].max() < 30  # only the left one is drawn
    oesophagus = structures.copy()
    oesophagus[28:32, 40:44, 45:] = BOWEL  # bowel elsewhere (medial, above the kidneys) does not stop it
    drawn = add_colon(oesophagus, labels, 3.0, np.random.default_rng(0), 1.0)
    added = drawn != oesophagus
    assert (np.argwhere(added)[:, 0] > 45).any() and (np.argwhere(added)[:, 0] < 14).any()
    no_kidney = np.where(labels > 0, BODY_OTHER, structures).astype(np.uint8)
    assert (add_colon(no_kidney, np.zeros_like(labels), 3.0, np.random.default_rng(0), 1.0) == no_kidney).all()
    assert (add_colon(structures, labels, 3.0, np.random.default_rng(0), 0.0) == structures).all()


def test_on_a_real_map_its_own_bowel_stops_the_colon_and_without_it_one_is_painted_as_bowel():
    anatomy = load_anatomy(discover_anatomy(S0328)[0], Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0)))
    rng = np.random.default_rng(1)
    assert (add_colon(anatomy.structures, anatomy.labels, 3.0, rng, 1.0) == anatomy.structures).all()  # it has its own colon
    without_bowel = np.where(anatomy.structures == BOWEL, BODY_OTHER, anatomy.structures).astype(np.uint8)
    drawn = add_colon(without_bowel, anatomy.labels, 3.0, rng, 1.0)
    colon = drawn != without_bowel
    assert colon.sum() > 1000 and (anatomy.labels[colon] == 0).all()
    as_colon, as_body = [], []
    for seed in range(4):  # painted as bowel (segments of gas, fluid, faeces), not as the body mixture it replaced
        as_colon.append((paint(drawn, anatomy.depth_mm, np.random.default_rng(seed), phase="portal_venous", random_phase=0.0)[colon] < -300).mean())
        as_body.append((paint(without_bowel, anatomy.depth_mm, np.random.default_rng(seed), phase="portal_venous", random_phase=0.0)[colon] < -300).mean())
    assert np.mean(as_colon) > 1.5 * np.mean(as_body)  # measured 0.10 against 0.03
