"""Patches with no organ: centred on body voxels far from every labelled organ.

Such patches (chest above the liver, pelvis, scans with no target organ at all) teach the network
that there is nothing to find there; drawn only in proportion to the organs, they would be rare.
A negative patch's case is drawn in proportion to its organ-free body (``NegativeCentres.weight``):
a map from the chest to the pelvis offers far more of what is not an organ than an abdomen cut
just above and below the organs, so the pelvis and chest are not drowned by the organs' own level.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from AbdoSegLib.model.preprocessing import PAD_VALUE

from .anatomy import AnatomyCase
from .prepared import PreparedCase

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


class NegativeCentres:
    """The centres of negative patches of each case, computed once per case (per process)."""

    def __init__(self):
        self._far: dict[str, np.ndarray] = {}

    def __call__(self, case: PreparedCase | AnatomyCase) -> np.ndarray:
        """(N, 3) int32 voxel centres far from every organ in ``case`` (``far_from_organs``)."""
        if case.name not in self._far:
            if isinstance(case, PreparedCase):  # the body: above the bottom of the HU window (air)
                labels, body = case.labels.numpy(), (case.image > PAD_VALUE + 0.05).numpy()
            else:
                labels, body = case.labels, case.structures > 0
            self._far[case.name] = far_from_organs(labels, body, float(np.linalg.norm(case.affine[:3, 0])))
        return self._far[case.name]

    def weight(self, case: PreparedCase | AnatomyCase) -> float:
        """How often ``case`` gives a negative patch, relative to the others: its number of
        centres, i.e. its body farther than ``FAR_MM`` from every organ in units of (2 voxels)^3
        (for a case with none, its farthest body voxels stand in)."""
        return float(len(self(case)))
