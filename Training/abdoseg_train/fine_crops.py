"""What the second stage sees: a case cut to the box of one organ, as the first stage would place it.

At inference the fine stage reads only a crop around the organ that the first stage drew (its box
widened by ``crop_margin_mm``, ``inference/fine_stage.py``), and the first stage's box is off by its
localisation error. A training patch of the fine stage is drawn (``augment.Augmenter``) from such a crop:
the organ's box in the reference labels, each face moved by a normal error of ``localisation_error_mm``
and widened by a margin drawn from half to one and a half ``crop_margin_mm``, clipped to the scan. With
``SCAN_EDGE_PROBABILITY`` one face of the crop is moved into the organ instead: the scan ends there, as a
crop of an organ cut by the scan's edge ends at that edge.

The patch then lies on the crop as one of inference's windows does (``window_centre``): the crop centred in
it where the crop is no longer than the patch, else flush with one of the sliding window's positions, so
that the fine network learns the windows it runs, a crop's face at a window's face included. Beyond the
crop the patch is padded as inference pads it (PAD_VALUE; "outside" in an anatomy map, painted as air).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from AbdoSegLib.inference.sliding_window import window_starts

from .anatomy import AnatomyCase
from .draw import NO_ORGAN
from .prepared import PreparedCase

MARGIN_RANGE = (0.5, 1.5)  # the margin drawn, as a share of crop_margin_mm
SCAN_EDGE_PROBABILITY = 0.3  # of a crop whose scan ends inside the organ
SCAN_EDGE_AXES = (0, 1, 2, 2, 2, 2)  # the axis it ends along: axial planes (z) two times in three
SCAN_EDGE_RANGE = (0.2, 0.8)  # where in the organ's extent along that axis the scan ends


def organ_crop(case: PreparedCase | AnatomyCase, organ: int | None, margin_mm: float, error_mm: float,
               rng: np.random.Generator, scan_edge_probability: float = 0.0) -> PreparedCase | AnatomyCase:
    """``case`` cut to a jittered, widened box of ``organ`` (the whole case when the organ is None, NO_ORGAN
    or absent from it), with ``scan_edge_probability`` one of its faces moved into the organ (the scan's edge);
    its arrays are views, its affine moved to the crop's first voxel."""
    labels = np.asarray(case.labels)
    if organ in (None, NO_ORGAN) or organ not in case.organ_labels:
        return case
    spacing = np.linalg.norm(case.affine[:3, :3], axis=0)
    box, extent = [], []
    for axis in range(3):
        present = np.flatnonzero((labels == organ).any(axis=tuple(a for a in range(3) if a != axis)))
        low, high = present[0], present[-1] + 1
        widen = rng.uniform(*MARGIN_RANGE, 2) * margin_mm + rng.normal(0.0, error_mm, 2)  # mm below low, above high
        low, high = int(round(low - widen[0] / spacing[axis])), int(round(high + widen[1] / spacing[axis]))
        low, high = min(max(low, 0), labels.shape[axis] - 1), max(min(high, labels.shape[axis]), 1)
        box.append([low, max(high, low + 1)])
        extent.append((int(present[0]), int(present[-1]) + 1))
    if scan_edge_probability and rng.random() < scan_edge_probability:
        _end_scan_in_organ(box, extent, rng)
    box = tuple(slice(low, max(high, low + 1)) for low, high in box)
    affine = case.affine.copy()
    affine[:3, 3] += case.affine[:3, :3] @ np.array([s.start for s in box])
    arrays = ("image", "labels") if isinstance(case, PreparedCase) else ("structures", "labels", "depth_mm")
    return dataclasses.replace(case, affine=affine, **{name: getattr(case, name)[box] for name in arrays})


def _end_scan_in_organ(box: list[list[int]], extent: list[tuple[int, int]], rng: np.random.Generator) -> None:
    """Move one face of ``box`` ([low, high) voxels per axis) to a plane through the organ, whose voxels span
    [first, end) along each axis (``extent``), leaving organ voxels on both sides of it; in place."""
    axis = int(rng.choice(SCAN_EDGE_AXES))
    first, end = extent[axis]
    if end - first > 1:
        box[axis][rng.integers(2)] = min(max(int(round(first + rng.uniform(*SCAN_EDGE_RANGE) * (end - first))), first + 1), end - 1)


def window_centre(shape: tuple[int, ...], patch: tuple[int, ...], overlap: float, rng: np.random.Generator) -> np.ndarray:
    """The centre (3,) in voxels of a crop of ``shape`` of a training patch placed as one of inference's sliding
    windows of ``patch`` with ``overlap`` (``inference.sliding_window``): where the crop is no longer than the
    patch, the crop centred in it (padded half before, half after); else one of the windows' positions, drawn
    uniformly, which puts the crop's faces at a window's faces."""
    starts = [window_starts(n, p, overlap) if n > p else [-((p - n) // 2)] for n, p in zip(shape, patch)]
    return np.array([s[rng.integers(len(s))] + p // 2 for s, p in zip(starts, patch)])
