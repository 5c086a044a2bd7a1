"""Predicted organs from the model grid back onto the input grid, at sub-voxel precision.

For each organ one value is interpolated, only inside the organ's bounding box: its
margin over the strongest other class, p_organ - max(p_other). Its sign is the argmax
decision at every model voxel, so the organ neither shrinks nor grows where the winning
probability is below 0.5; a full-resolution multi-channel probability volume is never
built. The cleaned low-resolution mask decides inside/outside at each model voxel, and the
margins place the boundary between voxel centres.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.preprocessing import ModelGrid
from ..organs import ORGANS

MARGIN = 0.02  # keeps a cleaned voxel above, and a removed one below, the threshold 0


def labels_on_input_grid(probabilities: torch.Tensor, cleaned: np.ndarray, grid: ModelGrid) -> np.ndarray:
    """Organ labels on the input grid.

    probabilities: (C, X, Y, Z) float32 softmax on the model grid; cleaned: (X, Y, Z) uint8
    cleaned argmax labels on the model grid. Returns uint8 labels on the input grid (its shape
    and voxel order).
    """
    labels = np.zeros(grid.canonical_shape, dtype=np.uint8)
    score = np.zeros(grid.canonical_shape, dtype=np.float16)  # margin of the organ labelled at each voxel
    for organ in ORGANS:
        mask = cleaned == organ.label
        if not mask.any():
            continue
        low, high = _box(mask)
        crop = tuple(slice(a, b + 1) for a, b in zip(low, high))
        inside = torch.from_numpy(mask[crop])
        value = _margin(probabilities[(slice(None), *crop)], organ.label)
        value = torch.where(inside, value.clamp(min=MARGIN), value.clamp(max=-MARGIN))
        target = []
        for axis in range(3):
            first, last = _input_range(grid, axis, low[axis], high[axis])
            coordinates = grid.model_coordinates(axis, np.arange(first, last + 1)) - low[axis]
            value = _lerp_axis(value, axis, coordinates)
            target.append(slice(first, last + 1))
        target = tuple(target)
        value = value.numpy()
        hit = value > score[target]  # > 0, and above any organ already placed there
        score[target][hit] = value[hit]
        labels[target][hit] = organ.label
    return grid.to_input_orientation(labels)


def _margin(probabilities: torch.Tensor, label: int) -> torch.Tensor:
    """p[label] - max over the other classes, for probabilities (C, X, Y, Z) -> (X, Y, Z)."""
    others = torch.cat([probabilities[:label], probabilities[label + 1 :]])
    return probabilities[label] - others.max(dim=0).values


def _box(mask: np.ndarray) -> tuple[list[int], list[int]]:
    """Bounding box of a mask, widened by one voxel (the removed rim) within the array."""
    low, high = [], []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        low.append(max(int(present[0]) - 1, 0))
        high.append(min(int(present[-1]) + 1, mask.shape[axis] - 1))
    return low, high


def _input_range(grid: ModelGrid, axis: int, low: int, high: int) -> tuple[int, int]:
    """Input-grid indices whose model coordinate lies within [low, high] along ``axis``.

    A box at the edge of the model grid extends to the edge of the input grid.
    """
    size, model_size = grid.canonical_shape[axis], grid.shape[axis]
    first = 0 if low == 0 else int(np.ceil(grid.canonical_coordinates(axis, np.float64(low))))
    last = size - 1 if high == model_size - 1 else int(np.floor(grid.canonical_coordinates(axis, np.float64(high))))
    return min(max(first, 0), size - 1), min(max(last, 0), size - 1)


def _lerp_axis(values: torch.Tensor, axis: int, coordinates: np.ndarray) -> torch.Tensor:
    """Linear interpolation of ``values`` along ``axis`` at continuous indices (clamped)."""
    coordinates = np.clip(coordinates, 0, values.shape[axis] - 1)
    below = np.floor(coordinates).astype(np.int64)
    above = np.minimum(below + 1, values.shape[axis] - 1)
    shape = [1, 1, 1]
    shape[axis] = len(coordinates)
    weight = torch.from_numpy((coordinates - below).astype(np.float32)).reshape(shape)
    a = values.index_select(axis, torch.from_numpy(below))
    b = values.index_select(axis, torch.from_numpy(above))
    return a + (b - a) * weight
