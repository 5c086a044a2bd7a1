"""Clean-up of a predicted labelmap: one connected piece per organ, no holes inside it."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .organs import BACKGROUND, ORGANS


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def clean_labels(labels: np.ndarray) -> np.ndarray:
    """Keep each organ's largest component and fill its holes (only where nothing else is).

    labels: (X, Y, Z) uint8 organ ids; returns a new array of the same shape.
    """
    cleaned = np.zeros_like(labels)
    for organ in ORGANS:
        mask = labels == organ.label
        if not mask.any():
            continue
        mask = largest_component(mask)
        mask = ndimage.binary_fill_holes(mask) & ((labels == BACKGROUND) | (labels == organ.label))
        cleaned[mask] = organ.label
    return cleaned
