"""A colon beside the kidneys where an anatomy map labels no bowel.

41 of the 45 training maps label no colon (the 3D-IRCADb, BTCV and AMOS maps; only the TotalSegmentator ones
do), so the descending and ascending colon, which run down the flanks in front of and beside the kidneys and
below their lower poles, were painted as the generic body mixture. A network that has never seen bowel there
draws a kidney down along the colon (issue 13's scan A; the sample cut through its left kidney's lower pole).

In a patch that holds a kidney, a tube of colon (``structures`` id "bowel", painted with a wall and
contents by ``bowel.py``; labelled background) is drawn the whole height of the patch, lateral to the kidney
(by its radius plus a gap) and level with it or in front, meandering; it takes only body voxels that nothing
else claims ("body_other"). It is not drawn where the map has bowel of its own within ``CLEAR_MM`` of the
tube: a map's own colon lies there, while its oesophagus or duodenum (the same structure id) lie elsewhere.
Geometry: a tube 2.4-5.6 cm across (an adult descending colon measures about 2.5-5 cm), lying against the
kidney's lateral border or up to 1.5 cm from it.
"""

from __future__ import annotations

import numpy as np

from .structures import STRUCTURE_IDS

# Of a synthetic patch holding a kidney, with a colon beside each kidney (where the map has none). Off by default:
# two fine-tuning runs with it (0.5) did not beat the network without it (model card, stages 12 and 13).
COLON_PROBABILITY = 0.0
RADIUS_MM, GAP_MM, FORWARD_MM = (12.0, 28.0), (0.0, 15.0), (-10.0, 30.0)
MEANDER_MM, MEANDER_PERIOD_MM = (0.0, 10.0), (60.0, 160.0)
CLEAR_MM = 20.0  # a map's own bowel this close to the box of the tube stops it
KIDNEY_SIDES = ((STRUCTURE_IDS["right_kidney"], 1), (STRUCTURE_IDS["left_kidney"], -1))  # RAS axis 0 runs to the right
BODY_OTHER, BOWEL = STRUCTURE_IDS["body_other"], STRUCTURE_IDS["bowel"]


def add_colon(structures: np.ndarray, labels: np.ndarray, spacing_mm: float, rng: np.random.Generator,
              probability: float = COLON_PROBABILITY) -> np.ndarray:
    """(X, Y, Z) structure ids and organ labels of one patch (RAS voxel order) -> a new structure map with a colon
    beside each kidney in it, with ``probability``, where the map's own bowel is not near; ``spacing_mm``: isotropic voxel size."""
    if rng.random() >= probability:
        return structures
    structures = structures.copy()
    x, y = np.meshgrid(np.arange(structures.shape[0]), np.arange(structures.shape[1]), indexing="ij")
    z = np.arange(structures.shape[2])
    for kidney, side in KIDNEY_SIDES:
        voxels = np.argwhere(labels == kidney)
        if not len(voxels):
            continue
        radius = rng.uniform(*RADIUS_MM) / spacing_mm
        lateral_edge = voxels[:, 0].max() if side > 0 else voxels[:, 0].min()
        centre_x = lateral_edge + side * (radius + rng.uniform(*GAP_MM) / spacing_mm)
        centre_y = voxels[:, 1].mean() + rng.uniform(*FORWARD_MM) / spacing_mm
        # The tube's centre (X, Y) in each slice, meandering with a random amplitude and period.
        amplitude, period = rng.uniform(*MEANDER_MM, size=2) / spacing_mm, rng.uniform(*MEANDER_PERIOD_MM) / spacing_mm
        phase = rng.uniform(0, 2 * np.pi, size=2)
        path_x = centre_x + amplitude[0] * np.sin(2 * np.pi * z / period + phase[0])
        path_y = centre_y + amplitude[1] * np.sin(2 * np.pi * z / period + phase[1])
        tube = (x[..., None] - path_x) ** 2 + (y[..., None] - path_y) ** 2 <= radius**2
        if not tube.any() or _bowel_near(structures, tube, CLEAR_MM / spacing_mm):
            continue
        structures[tube & (structures == BODY_OTHER)] = BOWEL
    return structures


def _bowel_near(structures: np.ndarray, tube: np.ndarray, margin: float) -> bool:
    """Whether ``structures`` holds bowel within ``margin`` voxels of the bounding box of the (X, Y, Z) bool ``tube``."""
    box = []
    for axis in range(3):
        present = np.nonzero(tube.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        box.append(slice(max(int(present[0] - margin), 0), int(present[-1] + margin) + 1))
    return bool((structures[tuple(box)] == BOWEL).any())
