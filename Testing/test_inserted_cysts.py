"""A cyst inserted into a CT beside an organ (``abdoseg_train.inserted_cysts``), on exactly-known volumes."""

from __future__ import annotations

import numpy as np
import pytest

from abdoseg_train.inserted_cysts import CYST_HU, cyst_beside, noise_sd, paint_cyst, replaceable_tissue
from AbdoSegLib.image import Image

SPACING_MM = 2.0
RAS = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
LPS = np.diag([-SPACING_MM, -SPACING_MM, SPACING_MM, 1.0])  # i grows toward the left, j toward the back


def box_organ(shape=(60, 60, 60)) -> np.ndarray:
    """A 20 x 20 x 20 voxel (40 mm) cube in the middle of the volume."""
    organ = np.zeros(shape, dtype=bool)
    organ[20:40, 20:40, 20:40] = True
    return organ


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3]


@pytest.mark.parametrize("affine", [RAS, LPS], ids=["RAS", "LPS"])
def test_the_cyst_touches_the_organ_on_the_side_asked_in_world_coordinates(affine):
    organ = box_organ()
    free = ~organ
    cyst = cyst_beside(organ, free, affine, (0.0, 1.0, 0.0), 20.0)  # 20 mL: a ball of 16.8 mm radius
    offset = world_centroid(cyst, affine) - world_centroid(organ, affine)
    assert offset[1] > 30 and abs(offset[0]) < 1 and abs(offset[2]) < 1  # anterior, whatever the voxel order
    assert not (cyst & organ).any()
    grown = np.zeros_like(organ)
    grown[19:41, 19:41, 19:41] = True  # the cube and its next layer of voxels
    assert (cyst & grown).any()  # it touches the organ
    assert cyst.sum() * SPACING_MM**3 / 1000 == pytest.approx(20.0, rel=0.05)


def test_the_cyst_takes_only_replaceable_voxels():
    organ = box_organ()
    free = ~organ
    free[:, 45:, :] = False  # bone in front of the organ, from 10 mm in front of it
    cyst = cyst_beside(organ, free, RAS, (0.0, 1.0, 0.0), 20.0)
    assert cyst.any() and not cyst[:, 45:, :].any()
    assert cyst.sum() * SPACING_MM**3 / 1000 < 20.0


def test_an_empty_organ_is_refused():
    with pytest.raises(ValueError, match="no voxel"):
        cyst_beside(np.zeros((10, 10, 10), bool), np.ones((10, 10, 10), bool), RAS, (1.0, 0.0, 0.0), 5.0)


def test_replaceable_tissue_is_body_soft_tissue_without_organ_labels():
    hu = np.array([-1000.0, -100.0, 40.0, 40.0, 700.0]).reshape(5, 1, 1)
    labels = np.array([0, 0, 0, 2, 0]).reshape(5, 1, 1)
    replaceable = replaceable_tissue(Image(hu, RAS), labels)
    assert replaceable.ravel().tolist() == [False, True, True, False, False]  # air, fat, soft tissue, kidney, bone


def test_noise_sd_measures_white_noise_of_a_known_deviation():
    rng = np.random.default_rng(0)
    hu = 40.0 + 12.0 * rng.standard_normal((60, 60, 60))
    assert noise_sd(Image(hu, RAS)) == pytest.approx(12.0, rel=0.03)


def test_painting_fills_the_cyst_with_fluid_and_the_scans_noise_and_leaves_the_rest():
    rng = np.random.default_rng(1)
    hu = 40.0 + 10.0 * rng.standard_normal((60, 60, 60)).astype(np.float32)
    cyst = np.zeros(hu.shape, dtype=bool)
    cyst[20:40, 20:40, 20:40] = True
    image = Image(hu, RAS)
    painted = paint_cyst(image, cyst, noise_sd(image), np.random.default_rng(2)).array
    inside = painted[cyst]
    assert inside.mean() == pytest.approx(CYST_HU, abs=0.5)
    assert inside.std() == pytest.approx(10.0, rel=0.05)
    far = np.ones(hu.shape, dtype=bool)
    far[16:44, 16:44, 16:44] = False  # 4 voxels (8 mm, 8 sigmas of the wall blur) or more from the cyst
    assert np.array_equal(painted[far], hu[far])
    wall = painted[19, 20:40, 20:40]  # one voxel outside the cyst: part fluid, part tissue
    assert CYST_HU < wall.mean() < 40.0
