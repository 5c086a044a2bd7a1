"""Overlap metrics between a predicted and a reference labelmap on one grid."""

from __future__ import annotations

import numpy as np

from .organs import ORGANS


def dice(prediction: np.ndarray, reference: np.ndarray) -> float | None:
    """Dice of two boolean masks of one shape; None when both are empty (not applicable)."""
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def dice_per_organ(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float | None]:
    """{organ name: Dice} for two uint8 labelmaps of one shape."""
    return {organ.name: dice(prediction == organ.label, reference == organ.label) for organ in ORGANS}
