"""Patches with no organ: centred on body voxels far from every labelled organ.

Such patches (chest above the liver, pelvis, scans with no target organ at all) teach the network
that there is nothing to find there; drawn only in proportion to the organs, they would be rare.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FAR_MM = 60.0  # a negative patch is centred at least this far from every organ voxel
STRIDE = 2  # the distances are measured on every second voxel (6 mm on the 3 mm grid)


def far_from_organs(labels: np.ndarray, body: np.ndarray, spacing_mm: float, far_mm: float = FAR_MM) -> np.ndarray:
    """(N, 3) int32 voxel indices of (X, Y, Z) ``body`` voxels more than ``far_mm`` from every
    organ voxel (``labels`` > 0), on a grid of isotropic ``spacing_mm``.

    Measured on every ``STRIDE``-th voxel. Where no body voxel is that far, the farthest body
    voxels (at least 90 % of the largest distance); where there is no body, every sampled voxel.
    """
    coarse = (slice(None, None, STRIDE),) * 3
    organs, inside = labels[coarse] > 0, body[coarse]
    if not inside.any():
        inside = np.ones_like(inside)
    if organs.any():
        distance = ndimage.distance_transform_edt(~organs, sampling=spacing_mm * STRIDE)
    else:
        distance = np.full(organs.shape, np.inf)
    far = inside & (distance > far_mm)
    if not far.any():
        far = inside & (distance >= 0.9 * distance[inside].max())
    return (np.argwhere(far) * STRIDE).astype(np.int32)
