"""Organomegaly and atrophy: an organ of one patch grown into the body around it, or shrunk.

A big spleen or liver, or a small kidney, changes what the network must recognise more than any
brightness does. The organ's label and structure grow together, layer by layer, only into the
unlabelled body ("body_other": never into another organ, bone or vessel), or shrink, its outer
layers becoming the unlabelled body; the last layer is taken in part (where a smooth random field
is highest), so the surface stays smooth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .fields import smooth_field
from .structures import STRUCTURE_IDS

ORGAN_SCALING_PROBABILITY = 0.2  # of a synthetic patch with one organ grown or shrunk
VOLUME_FACTORS = {STRUCTURE_IDS["liver"]: (0.8, 1.5), STRUCTURE_IDS["spleen"]: (0.8, 1.5),
                  STRUCTURE_IDS["right_kidney"]: (0.6, 1.3), STRUCTURE_IDS["left_kidney"]: (0.6, 1.3)}
MAX_LAYERS = 12  # voxels an organ grows or shrinks by at most
BODY = STRUCTURE_IDS["body_other"]


def scale_organ(structures: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                probability: float = ORGAN_SCALING_PROBABILITY) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) structure ids and organ labels of one patch -> new (structures, labels) in which,
    with ``probability``, one organ present has its volume scaled by a factor drawn from
    ``VOLUME_FACTORS`` (as far as the body around it and ``MAX_LAYERS`` allow)."""
    structures, labels = structures.copy(), labels.copy()
    present = [organ for organ in VOLUME_FACTORS if (labels == organ).any()]
    if not present or rng.random() >= probability:
        return structures, labels
    organ_id = present[rng.integers(len(present))]
    organ = labels == organ_id
    target = int(round(organ.sum() * rng.uniform(*VOLUME_FACTORS[organ_id])))
    field = smooth_field(organ.shape, 2.0, rng)
    for _ in range(MAX_LAYERS):
        volume = int(organ.sum())
        if volume == target:
            break
        if volume < target:
            layer = ndimage.binary_dilation(organ) & ~organ & (structures == BODY) & (labels == 0)
        else:
            layer = organ & ~ndimage.binary_erosion(organ, border_value=1)
        if not layer.any():
            break
        needed = abs(target - volume)
        if needed < layer.sum():  # the part of the last layer where the field is highest
            scores = field[layer]
            layer[layer] = scores >= np.sort(scores)[-needed]
        if volume < target:
            organ |= layer
            structures[layer], labels[layer] = organ_id, organ_id
        else:
            organ &= ~layer
            structures[layer], labels[layer] = BODY, 0
    return structures, labels
