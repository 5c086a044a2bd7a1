"""What the second stage sees: a case cut to the box of one organ, as the first stage would place it.

At inference the fine stage reads only a crop around the organ that the first stage drew (its box
widened by ``crop_margin_mm``, ``inference/fine_stage.py``), and the first stage's box is off by its
localisation error. A training patch of the fine stage is drawn (``augment.Augmenter``) from such a crop:
the organ's box in the reference labels, each face moved by a normal error of ``localisation_error_mm``
and widened by a margin drawn from half to one and a half ``crop_margin_mm``, clipped to the scan. Beyond
the crop the patch is padded as inference pads it (PAD_VALUE; "outside" in an anatomy map, painted as air).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .anatomy import AnatomyCase
from .draw import NO_ORGAN
from .prepared import PreparedCase

MARGIN_RANGE = (0.5, 1.5)  # the margin drawn, as a share of crop_margin_mm


def organ_crop(case: PreparedCase | AnatomyCase, organ: int | None, margin_mm: float, error_mm: float,
               rng: np.random.Generator) -> PreparedCase | AnatomyCase:
    """``case`` cut to a jittered, widened box of ``organ`` (the whole case when the organ is None, NO_ORGAN
    or absent from it); its arrays are views, its affine moved to the crop's first voxel."""
    labels = np.asarray(case.labels)
    if organ in (None, NO_ORGAN) or organ not in case.organ_labels:
        return case
    spacing = np.linalg.norm(case.affine[:3, :3], axis=0)
    box = []
    for axis in range(3):
        present = np.flatnonzero((labels == organ).any(axis=tuple(a for a in range(3) if a != axis)))
        low, high = present[0], present[-1] + 1
        widen = rng.uniform(*MARGIN_RANGE, 2) * margin_mm + rng.normal(0.0, error_mm, 2)  # mm below low, above high
        low, high = int(round(low - widen[0] / spacing[axis])), int(round(high + widen[1] / spacing[axis]))
        low, high = min(max(low, 0), labels.shape[axis] - 1), max(min(high, labels.shape[axis]), 1)
        box.append(slice(low, max(high, low + 1)))
    box = tuple(box)
    affine = case.affine.copy()
    affine[:3, 3] += case.affine[:3, :3] @ np.array([s.start for s in box])
    arrays = ("image", "labels") if isinstance(case, PreparedCase) else ("structures", "labels", "depth_mm")
    return dataclasses.replace(case, affine=affine, **{name: getattr(case, name)[box] for name in arrays})
