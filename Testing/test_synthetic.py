"""Synthetic CT: scanner effects on painted tissue (the generator on 3D-IRCADb-01 maps is tested in
Testing/validate/test_synthetic_ircad.py)."""

from __future__ import annotations

import numpy as np

from abdoseg_train.structures import STRUCTURE_IDS
from abdoseg_train.synthetic import paint, synthesise


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
