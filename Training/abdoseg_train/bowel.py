"""Hollow organs painted as they are: a wall, and contents of gas, fluid, faeces or oral contrast.

Bowel (small bowel, colon, duodenum, oesophagus) gets a wall (its outer 1-2 voxels, enhancing
like soft tissue of the phase) around a lumen cut into segments of a loop's length that each hold one content (gas,
fluid, faeces or, in a share of scans, positive oral contrast) with pockets of gas that rise to
the anterior side (patients lie supine; axis 1 of RAS order runs to the front). The stomach gets
a 1-voxel wall around fluid or food with a gas cap at the front. Labels never change.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .fields import smooth_field

ANTERIOR_AXIS = 1
CONTENTS = ("gas", "fluid", "faeces", "contrast")
CONTENT_PROBABILITIES = (0.12, 0.38, 0.35, 0.15)  # of a lumen segment's content (contrast: in contrast scans)
ORAL_CONTRAST_SCANS = 0.3  # share of scans with positive oral contrast in the bowel
# (low, high) HU of each content; gas and contrast: the mean's range, faeces: the clipped mixture.
GAS_HU, FLUID_HU, FAECES_HU, CONTRAST_HU = (-1000.0, -700.0), (0.0, 30.0), (-200.0, 100.0), (150.0, 400.0)


def hollow_regions(inside: np.ndarray, wall_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) bool ``inside`` -> (wall, lumen) bool masks: the outer ``wall_voxels`` of it and the rest.

    The patch edge is not a wall: what the crop cut keeps its lumen.
    """
    lumen = ndimage.binary_erosion(inside, iterations=wall_voxels, border_value=1)
    return inside & ~lumen, lumen


def segments(lumen: np.ndarray, voxels: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) int segment of each ``lumen`` voxel: the nearest of random seeds, about one per
    ``voxels`` lumen voxels (a bowel loop's length), so that one long colon holds several contents."""
    points = np.argwhere(lumen)
    seeds = points[rng.choice(len(points), size=max(1, int(len(points) / voxels)), replace=False)]
    return cKDTree(seeds).query(points)[1]


def _anterior_offset(lumen: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """(N,) float32 voxels each lumen voxel lies in front of its segment's centroid."""
    front = np.nonzero(lumen)[ANTERIOR_AXIS].astype(np.float32)
    centroids = np.bincount(segment, weights=front) / np.maximum(np.bincount(segment), 1)
    return front - centroids[segment].astype(np.float32)


def _gas_pockets(lumen: np.ndarray, segment: np.ndarray, fraction: float, blobs: float, field: np.ndarray) -> np.ndarray:
    """(N,) bool over the lumen voxels: the ``fraction`` of them highest in a blob field
    (weight ``blobs``) plus their height in front of their segment's centre (gas rises)."""
    score = blobs * field[lumen] + _anterior_offset(lumen, segment)
    return score > np.quantile(score, 1 - fraction) if fraction > 0 else np.zeros(len(score), dtype=bool)


def paint_bowel(inside: np.ndarray, wall_hu: tuple[float, float], texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HU (N,) float32 of the bowel voxels ``inside`` ((X, Y, Z) bool): wall and contents.

    ``wall_hu``: (low, high) of the wall's mean (the phase's); ``texture``: (X, Y, Z) field, std 1.
    """
    wall, lumen = hollow_regions(inside, int(rng.integers(1, 3)))
    hu = np.empty(inside.shape, dtype=np.float32)
    hu[wall] = rng.uniform(*wall_hu) + rng.uniform(5, 15) * texture[wall]
    if lumen.any():
        segment = segments(lumen, rng.uniform(200, 1000), rng)
        probabilities = np.array(CONTENT_PROBABILITIES)
        if rng.random() >= ORAL_CONTRAST_SCANS:
            probabilities[CONTENTS.index("contrast")] = 0
        content = rng.choice(len(CONTENTS), size=segment.max() + 1, p=probabilities / probabilities.sum())[segment]
        fine = smooth_field(inside.shape, rng.uniform(0.5, 0.9), rng)[lumen]
        values = {
            "gas": np.clip(rng.uniform(-1000, -850) + rng.uniform(10, 40) * fine, *GAS_HU),
            "fluid": rng.uniform(*FLUID_HU) + rng.uniform(2, 6) * fine,
            "faeces": np.clip(rng.uniform(-120, 40) + rng.uniform(40, 90) * fine, *FAECES_HU),
            "contrast": rng.uniform(*CONTRAST_HU) + rng.uniform(10, 40) * fine,
        }
        lumen_hu = np.choose(content, [values[name].astype(np.float32) for name in CONTENTS])
        blobs = smooth_field(inside.shape, rng.uniform(1.0, 2.5), rng)
        gas = _gas_pockets(lumen, segment, rng.uniform(0.0, 0.15), rng.uniform(1.0, 4.0), blobs)
        lumen_hu[gas] = values["gas"][gas]
        hu[lumen] = lumen_hu
    return hu[inside]


def paint_stomach(inside: np.ndarray, wall_hu: tuple[float, float], contents_hu: tuple[float, float],
                  texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HU (N,) float32 of the stomach voxels ``inside``: a 1-voxel wall of mean in ``wall_hu``
    around fluid or food (mean in ``contents_hu``) with a gas cap of 0-35 % of the lumen in front."""
    wall, lumen = hollow_regions(inside, 1)
    hu = np.empty(inside.shape, dtype=np.float32)
    hu[wall] = rng.uniform(*wall_hu) + rng.uniform(5, 15) * texture[wall]
    if lumen.any():
        lumen_hu = rng.uniform(*contents_hu) + rng.uniform(3, 20) * texture[lumen]
        gas = _gas_pockets(lumen, np.zeros(int(lumen.sum()), dtype=np.intp), rng.uniform(0.0, 0.35), 0.3, texture)
        lumen_hu[gas] = rng.uniform(GAS_HU[0], -850) + rng.uniform(10, 40) * texture[lumen][gas]
        hu[lumen] = np.clip(lumen_hu, GAS_HU[0], None)
    return hu[inside]
