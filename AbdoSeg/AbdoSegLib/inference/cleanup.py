"""From a network's class probabilities to a clean labelmap: the winning class per voxel, then no fat or gas,
one connected piece per organ, no holes inside it."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..organs import BACKGROUND, ORGANS

# Upper bound of adipose tissue in CT (body-composition work segments fat as -190...-30 HU).
# Liver, kidney and spleen parenchyma lie above it in every phase, so an organ voxel below it
# is renal-sinus or perirenal fat, bowel gas or air that the network took in at the edge.
FAT_MAX_HU = -30.0


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def winning_class(probabilities: torch.Tensor) -> np.ndarray:
    """(X, Y, Z) uint8 argmax of (C, X, Y, Z) CPU class probabilities (ties: the lowest class id)."""
    # max's indices are argmax's, ties included, and on the CPU about ten times faster over the leading axis.
    return probabilities.max(dim=0).indices.to(torch.uint8).numpy()


def clean_labels(labels: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Drop organ voxels below ``FAT_MAX_HU``, then keep each organ's largest component and
    fill its holes (only where nothing else is; an enclosed pocket of fat is organ again).

    labels: (X, Y, Z) uint8 organ ids; hu: (X, Y, Z) HU on the same grid (the network's input
    is enough: a window that starts below -30 HU keeps the values that matter). Returns a new
    uint8 array of the labels' shape.
    """
    not_fat = hu >= FAT_MAX_HU
    cleaned = np.zeros_like(labels)
    for organ in ORGANS:
        mask = (labels == organ.label) & not_fat
        if not mask.any():
            continue
        # Done in the organ's bounding box, with the whole grid's answer: background on the box's faces
        # joins the background all around the box, so no hole is opened or closed there.
        box = ndimage.find_objects(mask.view(np.uint8))[0]
        inside = labels[box]
        mask = ndimage.binary_fill_holes(largest_component(mask[box])) & ((inside == BACKGROUND) | (inside == organ.label))
        cleaned[box][mask] = organ.label
    return cleaned
