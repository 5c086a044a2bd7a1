"""Urine in the renal pelvis (``renal_sinus.py``): the sinus of an exactly-known kidney shape, and the pelvis
drawn into the TotalSegmentator map s0328 (both kidneys labelled), painted as urine with the labels untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from abdoseg_train.anatomy import discover_anatomy, load_anatomy
from abdoseg_train.cli import main as train_main
from abdoseg_train.renal_sinus import SINUS_RADIUS_MM, add_renal_pelvis, renal_sinus
from abdoseg_train.structures import STRUCTURE_IDS
from abdoseg_train.synthetic import paint
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.preprocessing import Preprocessing

S0328 = Path(__file__).resolve().parent / "Data" / "anatomy_totalseg" / "s0328_anatomy.nii.gz"
BODY, PELVIS = STRUCTURE_IDS["body_other"], STRUCTURE_IDS["renal_pelvis"]
KIDNEYS = (STRUCTURE_IDS["right_kidney"], STRUCTURE_IDS["left_kidney"])
SPACING_MM = 3.0


@pytest.fixture(scope="module")
def s0328():
    return load_anatomy(discover_anatomy(S0328)[0], Preprocessing((SPACING_MM,) * 3, (-200.0, 400.0)))


def kidney_with_hilum(shape=(40, 40, 40), centre=(20, 20, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A ball of radius 10 voxels with a wedge 8 voxels deep and 6 wide cut out of its -x side: (kidney, wedge) bool."""
    x, y, z = np.indices(shape)
    ball = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= 100
    wedge = ball & (x < centre[0] - 2) & (np.abs(y - centre[1]) <= 3) & (np.abs(z - centre[2]) <= 5)
    return ball & ~wedge, wedge


def test_the_sinus_is_the_hilum_of_the_kidney_and_nothing_of_a_convex_one():
    kidney, wedge = kidney_with_hilum()
    sinus = renal_sinus(kidney, ~kidney, radius=4.0)
    deep = wedge & (np.indices(wedge.shape)[0] >= 16)  # its inner 2 voxels; the mouth at the ball's rim stays open
    assert np.all(sinus[deep]) and not (sinus & ~wedge).any()
    x, y, z = np.indices(kidney.shape)
    ball = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 100
    assert not renal_sinus(ball, ~ball, radius=4.0).any()


def test_a_kidney_cut_by_the_volume_keeps_its_hilum_and_only_body_is_taken():
    kidney, wedge = kidney_with_hilum()
    cut = (slice(None), slice(None), slice(17, None))  # the volume's first slice cuts the kidney and its hilum (z 15-25)
    sinus = renal_sinus(kidney[cut], ~kidney[cut], radius=4.0)
    deep = (wedge & (np.indices(wedge.shape)[0] >= 16))[cut]
    assert np.all(sinus[deep]) and not (sinus & ~wedge[cut]).any()
    vessel = np.zeros(kidney.shape, dtype=bool)
    vessel[:, 18:22, :] = True  # another structure through the hilum: never body
    assert not (renal_sinus(kidney, ~kidney & ~vessel, radius=4.0) & vessel).any()


def test_s0328_gets_urine_in_each_kidneys_sinus_and_nowhere_else(s0328):
    before = s0328.structures.copy()
    drawn = add_renal_pelvis(s0328.structures, SPACING_MM, np.random.default_rng(0), probability=1.0)
    np.testing.assert_array_equal(s0328.structures, before)  # a new map: the cached one is never changed
    changed = drawn != before
    assert np.all(before[changed] == BODY) and np.all(drawn[changed] == PELVIS)
    near = [ndimage.distance_transform_edt(before != kidney) * SPACING_MM <= SINUS_RADIUS_MM for kidney in KIDNEYS]
    for kidney_near in near:
        millilitres = (changed & kidney_near).sum() * SPACING_MM**3 / 1000
        assert 2 < millilitres < 60, millilitres  # a renal pelvis holds a few to a few tens of mL
    assert not (changed & ~(near[0] | near[1])).any()
    np.testing.assert_array_equal(add_renal_pelvis(before, SPACING_MM, np.random.default_rng(0), probability=0.0), before)
    for phase in ("portal_venous", "unenhanced"):
        hu = paint(drawn, s0328.depth_mm, np.random.default_rng(1), phase=phase, random_phase=0.0)
        assert -10 < np.median(hu[changed]) < 30  # urine 0-20 HU with its texture


def test_synth_draws_the_pelvis_and_keeps_the_labels(s0328, tmp_path):
    command = ["synth", str(S0328), "-o", str(tmp_path), "--phase", "unenhanced", "--spacing", str(SPACING_MM),
               "--distractor-probability", "0", "--lesion-probability", "0", "--organ-scaling-probability", "0", "--renal-pelvis-probability", "1"]
    assert train_main(command) == 0
    folder = tmp_path / "s0328_synthetic_1"
    np.testing.assert_array_equal(read_image(folder / "label.nii.gz").array, s0328.labels)
    assert json.loads((folder / "case.json").read_text())["synthetic"]["variation"]["renal_pelvis_probability"] == 1.0


def test_synth_refuses_a_probability_outside_0_to_1(tmp_path, capsys):
    assert train_main(["synth", str(S0328), "-o", str(tmp_path / "out"), "--renal-pelvis-probability", "1.5"]) == 1
    assert capsys.readouterr().err.strip() == "abdoseg-train: error: --renal-pelvis-probability must lie between 0 and 1, not 1.5."
    assert not (tmp_path / "out").exists()
