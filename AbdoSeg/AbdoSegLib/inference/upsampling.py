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
Box = tuple[slice, slice, slice]


def labels_on_input_grid(probabilities: torch.Tensor, cleaned: np.ndarray, grid: ModelGrid) -> np.ndarray:
    """Organ labels on the input grid.

    probabilities: (C, X, Y, Z) float32 softmax on the model grid; cleaned: (X, Y, Z) uint8
    cleaned argmax labels on the model grid. Returns uint8 labels on the input grid (its shape
    and voxel order).
    """
    labels, _, _ = canonical_labels(probabilities, cleaned, grid)
    return grid.to_input_orientation(labels)


def canonical_labels(probabilities: torch.Tensor, cleaned: np.ndarray, grid: ModelGrid) -> tuple[np.ndarray, np.ndarray, dict[int, Box]]:
    """``labels_on_input_grid`` in canonical voxel order (grid.canonical_shape), with what a second stage needs:
    (uint8 labels, float16 margin of the organ labelled at each voxel (0 on background), {organ label: the box
    of input voxels (slices) outside which that organ is never placed}) for the organs drawn."""
    labels = np.zeros(grid.canonical_shape, dtype=np.uint8)
    score = np.zeros(grid.canonical_shape, dtype=np.float16)
    boxes = {}
    for organ in ORGANS:
        mask = cleaned == organ.label
        if mask.any():
            boxes[organ.label], value = organ_margin(probabilities, mask, organ.label, grid)
            place(labels, score, boxes[organ.label], value, organ.label)
    return labels, score, boxes


def organ_margin(probabilities: torch.Tensor, mask: np.ndarray, label: int, grid: ModelGrid) -> tuple[Box, np.ndarray]:
    """One organ's margin p_organ - max(p_other) on the input voxels of its box (``_box``, on ``grid.canonical_shape``).

    probabilities: (C, X, Y, Z) on ``grid``; mask: (X, Y, Z) bool, the organ after clean-up (decides the sign at
    each model voxel). Returns (box as slices of canonical input indices, float32 margins of the box's shape).
    """
    low, high = _box(mask)
    crop = tuple(slice(a, b + 1) for a, b in zip(low, high))
    inside = torch.from_numpy(mask[crop])
    value = _margin(probabilities[(slice(None), *crop)], label)
    value = torch.where(inside, value.clamp(min=MARGIN), value.clamp(max=-MARGIN))
    target = []
    for axis in range(3):
        first, last = _input_range(grid, axis, low[axis], high[axis])
        coordinates = grid.model_coordinates(axis, np.arange(first, last + 1)) - low[axis]
        value = lerp_axis(value, axis, coordinates)
        target.append(slice(first, last + 1))
    return tuple(target), value.numpy()


def place(labels: np.ndarray, score: np.ndarray, box: Box, value: np.ndarray, label: int) -> None:
    """Label ``label`` where its margin ``value`` (over ``box``) is > 0 and above the ``score`` of what is there (in place)."""
    hit = value > score[box]
    score[box][hit] = value[hit]
    labels[box][hit] = label


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


def lerp_axis(values: torch.Tensor, axis: int, coordinates: np.ndarray) -> torch.Tensor:
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
