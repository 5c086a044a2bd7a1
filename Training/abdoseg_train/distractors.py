"""Distractors: what is not an organ but looks like one, and lesions that are part of one.

Drawn into the structure map of one patch (a copy, never the cached map); the labels never change:

- outside the organs, next to a liver, kidney or spleen (touching it or up to 20 mm away), cysts
  (fluid, smooth with a sharp wall) and solid masses (lobulated, textured) of 10-60 mm radius, as large as a
  ~400 mL cystic mass below the liver, in the rest of the body, bowel or muscle: labelled background;
- inside an organ, hypodense or hyperdense lesions of 5-25 mm radius: labelled as the organ.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .fields import smooth_field
from .structures import STRUCTURE_IDS

DISTRACTOR_PROBABILITY = 0.3  # of a synthetic patch with 1-3 distractors next to its organs
LESION_PROBABILITY = 0.3  # of a synthetic patch with 1-4 lesions inside its organs
ORGANS = (STRUCTURE_IDS["liver"], STRUCTURE_IDS["right_kidney"], STRUCTURE_IDS["left_kidney"], STRUCTURE_IDS["spleen"])
HOSTS = (STRUCTURE_IDS["body_other"], STRUCTURE_IDS["bowel"], STRUCTURE_IDS["muscle"])  # where distractors may lie
CYST, MASS = STRUCTURE_IDS["cyst"], STRUCTURE_IDS["other_tumour"]
LESIONS = (STRUCTURE_IDS["liver_cyst"], STRUCTURE_IDS["liver_tumour"], STRUCTURE_IDS["artery"])  # hypo-, hypo-, hyperdense
DISTRACTOR_RADIUS_MM, LESION_RADIUS_MM, MAX_AXIS_MM, GAP_MM = (10.0, 45.0), (5.0, 25.0), 60.0, 20.0
# A distractor lies where a mass would grow: a blob placed over bone, vessels or other organs for
# more than 15 % of its volume is placed again (up to 5 times), else left out.
PLACEMENTS, MIN_HOST_SHARE = 5, 0.85


def add_distractors(structures: np.ndarray, labels: np.ndarray, spacing_mm: float, rng: np.random.Generator,
                    distractor_probability: float = DISTRACTOR_PROBABILITY,
                    lesion_probability: float = LESION_PROBABILITY) -> np.ndarray:
    """(X, Y, Z) structure ids and organ labels of one patch -> a new (X, Y, Z) structure map with
    distractors drawn next to the labelled organs (each patch with ``distractor_probability``) and
    lesions inside them (with ``lesion_probability``); ``spacing_mm``: the isotropic voxel size.
    Nothing is drawn where the patch labels no organ."""
    structures = structures.copy()
    present = [organ for organ in ORGANS if (labels == organ).any()]
    if not present:
        return structures
    if rng.random() < distractor_probability:
        for _ in range(int(rng.integers(1, 4))):
            organ = labels == present[rng.integers(len(present))]
            kind = CYST if rng.random() < 0.5 else MASS
            for _ in range(PLACEMENTS):
                blob = _beside(organ, spacing_mm, rng, 0.03 if kind == CYST else rng.uniform(0.05, 0.3))
                host = blob & np.isin(structures, HOSTS)
                if host.sum() >= MIN_HOST_SHARE * blob.sum() > 0:
                    break
            else:
                continue
            pieces, count = ndimage.label(host)  # the largest piece: a vessel may cut the blob
            structures[pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1] = kind
    if rng.random() < lesion_probability:
        for _ in range(int(rng.integers(1, 5))):
            organ_id = present[rng.integers(len(present))]
            voxels = np.argwhere(labels == organ_id)
            centre = voxels[rng.integers(len(voxels))]
            radius = rng.uniform(*LESION_RADIUS_MM) / spacing_mm
            mask = _blob(structures.shape, centre, radius * rng.uniform(0.8, 1.25, 3), 0.15, rng)
            structures[mask & (structures == organ_id)] = LESIONS[rng.integers(len(LESIONS))]
    return structures


def _beside(organ: np.ndarray, spacing_mm: float, rng: np.random.Generator, lobulation: float) -> np.ndarray:
    """(X, Y, Z) bool: a blob (``_blob``) outside ``organ`` that touches it or lies up to ``GAP_MM``
    away, on the side of a random point of its surface."""
    surface = np.argwhere(organ & ~ndimage.binary_erosion(organ))
    point = surface[rng.integers(len(surface))]
    direction = point - np.argwhere(organ).mean(axis=0)
    length = float(np.linalg.norm(direction))
    if length < 1e-6:  # a surface point at the centroid (a tiny organ): any direction will do
        direction = rng.normal(size=3)
        length = float(np.linalg.norm(direction))
    direction = direction / length
    axes = np.minimum(rng.uniform(*DISTRACTOR_RADIUS_MM) * rng.uniform(0.75, 1.33, 3), MAX_AXIS_MM) / spacing_mm
    reach = 1.0 / np.sqrt(np.sum((direction / axes) ** 2))  # the blob's half-extent along ``direction``
    centre = point + direction * (reach + rng.uniform(0, GAP_MM) / spacing_mm)
    return _blob(organ.shape, centre, axes, lobulation, rng) & ~organ


def _blob(shape: tuple[int, ...], centre: np.ndarray, axes: np.ndarray, lobulation: float,
          rng: np.random.Generator) -> np.ndarray:
    """(shape) bool: an axis-aligned ellipsoid of semi-axes ``axes`` (voxels) about ``centre``,
    its border pushed in and out by up to ``lobulation`` of its size (a smooth random field)."""
    mask = np.zeros(shape, dtype=bool)
    low = np.maximum(np.floor(centre - axes * 1.3).astype(int), 0)
    high = np.minimum(np.ceil(centre + axes * 1.3).astype(int) + 1, shape)
    if np.any(high <= low):
        return mask
    grid = np.ogrid[tuple(slice(a, b) for a, b in zip(low, high))]
    radius = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes)))
    box = tuple(high - low)
    mask[tuple(slice(a, b) for a, b in zip(low, high))] = radius < 1 + lobulation * smooth_field(box, 2.0, rng)
    return mask
