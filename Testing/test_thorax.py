"""Lungs and heart drawn where an anatomy map leaves the chest inside body_other (on a toy torso;
on a real 3D-IRCADb-01 map in Testing/validate/test_thorax_on_shared_maps.py)."""

from __future__ import annotations

import numpy as np

from abdoseg_train.structures import STRUCTURE_IDS
from abdoseg_train.thorax import add_thorax

BODY, BONE, LIVER = STRUCTURE_IDS["body_other"], STRUCTURE_IDS["bone"], STRUCTURE_IDS["liver"]
LUNG, HEART = STRUCTURE_IDS["lung"], STRUCTURE_IDS["heart"]


def _toy_torso() -> np.ndarray:
    """A 60 x 50 x 40 torso of 5 mm voxels: body, a ring of bone (the ribs) and, low on the
    patient's right (high x), a liver block whose top is at z = 19 and, at its medial edge, 14."""
    structures = np.zeros((60, 50, 40), dtype=np.uint8)
    structures[5:55, 5:45, :] = BODY
    x, y = np.meshgrid(np.arange(60), np.arange(50), indexing="ij")
    ring = np.abs(np.hypot((x - 30) / 22.0, (y - 25) / 17.0) - 1.0) < 0.06
    structures[ring] = BONE
    structures[32:48, 12:38, 0:20] = LIVER
    structures[32:36, 12:38, 15:20] = BODY
    return structures


def test_thorax_fills_the_rib_cage_above_the_diaphragm_and_changes_body_voxels_only():
    structures = _toy_torso()
    drawn = add_thorax(structures, np.array([5.0, 5.0, 5.0]), seed=1)
    changed = drawn != structures
    assert np.all(structures[changed] == BODY) and set(np.unique(drawn[changed])) == {LUNG, HEART}
    assert not np.any(np.isin(drawn, (LUNG, HEART)) & (structures == 0))  # nothing outside the body
    chest = np.isin(drawn, (LUNG, HEART))
    # Over the liver, nothing below its top + 1.5 voxels; the medial step of the dome is followed.
    assert not chest[36:48, 12:38, :21].any() and not chest[32:36, 12:38, :16].any()
    assert chest[40, 25, 30] and chest[34, 25, 17]
    # Away from the liver the diaphragm lies 10-30 mm (2-6 voxels) below the dome (z = 19).
    lowest = np.flatnonzero(chest[15, 25])[0]
    assert 14 <= lowest <= 18
    # Inside the ribs only: a band of chest wall stays body.
    assert not chest[6:9, 25, 30].any() and drawn[6, 25, 30] == BODY
    # The heart: left of the midline (lower x), in front of the centre (higher y), above the dome.
    heart = np.argwhere(drawn == HEART)
    assert len(heart) > 100
    assert heart[:, 0].mean() < 30 and heart[:, 1].mean() > 25 and heart[:, 2].min() >= 14
    assert np.array_equal(add_thorax(structures, np.array([5.0, 5.0, 5.0]), seed=1), drawn)  # one geometry per seed


def test_maps_without_liver_or_bone_are_left_as_they_are():
    structures = _toy_torso()
    no_liver = np.where(structures == LIVER, BODY, structures).astype(np.uint8)
    np.testing.assert_array_equal(add_thorax(no_liver, np.ones(3), seed=0), no_liver)
    no_bone = np.where(structures == BONE, BODY, structures).astype(np.uint8)
    np.testing.assert_array_equal(add_thorax(no_bone, np.ones(3), seed=0), no_bone)
