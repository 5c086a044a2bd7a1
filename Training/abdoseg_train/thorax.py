"""Lungs and heart for anatomy maps that leave the chest unlabelled.

Most anatomy maps label the liver but not the lungs or the heart: above the diaphragm, both
lie inside ``body_other`` and would be painted as abdominal fat and soft tissue. A network
trained on that has never seen a heart, and on real CT it takes the heart (as bright as the
liver after contrast) for liver. This module draws, on the model grid, the thoracic cavity
above the diaphragm and, in it, a heart:

- the diaphragm: over the liver, one voxel above the liver's top in each column; elsewhere,
  a level 10-30 mm below the top of the liver's dome (the left hemidiaphragm lies lower);
- the cavity: ``body_other`` above the diaphragm and inside the rib cage (the convex hull of
  the bone in each axial slice, less one voxel of chest wall), away from the spine and the
  labelled vessels (the mediastinum);
- the heart: the part of the cavity inside an ellipsoid left of the midline and anterior,
  resting on the diaphragm (semi-axes 40-65 mm); the rest of the cavity becomes lung.

Only ``body_other`` voxels change: labelled structures and the training labels never do.
The geometry is drawn once per map from ``seed``; the painter varies the intensities.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .body_outline import axial_convex_hulls
from .structures import STRUCTURE_IDS

BODY, BONE, LIVER = STRUCTURE_IDS["body_other"], STRUCTURE_IDS["bone"], STRUCTURE_IDS["liver"]
LUNG, HEART = STRUCTURE_IDS["lung"], STRUCTURE_IDS["heart"]
MEDIASTINAL = tuple(STRUCTURE_IDS[name] for name in ("artery", "vein", "portal_vein"))
# Structures the diaphragm lies on, like the liver, where a map labels them.
UNDER_DIAPHRAGM = tuple(STRUCTURE_IDS[name] for name in ("liver", "spleen", "stomach"))


def add_thorax(structures: np.ndarray, spacing_mm: np.ndarray, seed: int) -> np.ndarray:
    """(X, Y, Z) structure ids, voxel size ``spacing_mm`` (3,) in mm, canonical RAS (x to the
    patient's right, y anterior, z superior) -> a copy with lung and heart drawn in ``body_other``
    above the diaphragm. Maps without liver or bone are returned unchanged.
    """
    liver, bone = structures == LIVER, structures == BONE
    if not liver.any() or not bone.any():
        return structures.copy()
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    dome = int(np.flatnonzero(liver.any(axis=(0, 1)))[-1])
    above = _above_diaphragm(structures, dome, spacing, rng)
    cavity = (structures == BODY) & above & _rib_cage(bone, np.flatnonzero(above.any(axis=(0, 1))))
    cavity &= ~ndimage.binary_dilation(bone | np.isin(structures, MEDIASTINAL), iterations=2)
    heart = cavity & _heart_ellipsoid(structures, dome, spacing, rng)
    result = structures.copy()
    result[cavity] = LUNG
    result[heart] = HEART
    return result


def _above_diaphragm(structures: np.ndarray, dome: int, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) bool: voxels above the diaphragm surface (a height in each (x, y) column)."""
    floor = np.full(structures.shape[:2], dome - rng.uniform(10, 30) / spacing[2])
    z = np.arange(structures.shape[2])
    for label in UNDER_DIAPHRAGM:
        present = structures == label
        columns = present.any(axis=2)
        top = np.where(present, z, -1).max(axis=2)
        floor[columns] = np.maximum(floor[columns], top[columns] + 1.5)
    return z[None, None, :] > floor[:, :, None]


def _rib_cage(bone: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool: inside the convex hull of the bone in each axial slice of ``slices`` (the
    others stay False), less one voxel in-plane."""
    selected = np.zeros(bone.shape, dtype=bool)
    selected[:, :, slices] = bone[:, :, slices]
    return ndimage.binary_erosion(axial_convex_hulls(selected), structure=np.ones((3, 3, 1), dtype=bool))


def _heart_ellipsoid(structures: np.ndarray, dome: int, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) bool: an ellipsoid left of the body's midline, anterior, centred above the dome."""
    body = structures[:, :, dome] > 0
    xs, ys = np.nonzero(body)
    centre_mm = np.array([
        xs.mean() * spacing[0] - rng.uniform(5, 35),  # left of the midline: lower x
        ys.max() * spacing[1] - rng.uniform(60, 90),  # behind the anterior skin
        dome * spacing[2] + rng.uniform(0, 25),
    ])
    semi_axes_mm = np.array([rng.uniform(45, 65), rng.uniform(40, 55), rng.uniform(40, 55)])
    axes = [np.arange(n) * s for n, s in zip(structures.shape, spacing)]
    distance = sum(((a - c) / r).reshape([-1 if i == d else 1 for i in range(3)]) ** 2
                   for d, (a, c, r) in enumerate(zip(axes, centre_mm, semi_axes_mm)))
    return distance <= 1.0
