"""Urine in the renal pelvis: what real CT shows in a kidney's hilum and anatomy maps leave unlabelled.

A map labels each kidney's parenchyma and leaves its sinus (the hollow on the medial side that holds the
renal pelvis, the hilar vessels and fat) in the unlabelled body, which the painter fills with fat and soft
tissue. In real CT the pelvis holds urine (0-20 HU), as dense in unenhanced CT as the parenchyma's lower
range, and abdoseg-vnet-1.1 labels the sinus kidney (on the bundled sample, 30 mL of the right kidney's
220). Here the sinus is found as the kidney's morphological closing minus the kidney, and its
largest piece of unlabelled body becomes ``renal_pelvis`` in the structure map, painted as urine; the
labels never change (the pelvis is not kidney, as the maps say).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .structures import STRUCTURE_IDS

RENAL_PELVIS_PROBABILITY = 0.0  # of a kidney in a synthetic patch with urine in its sinus; off: three runs at 0.5 did not help
SINUS_RADIUS_MM = 12.0  # the closing's radius: it fills the hilum (20-30 mm wide), not the kidney's shallow dents
KIDNEYS = (STRUCTURE_IDS["right_kidney"], STRUCTURE_IDS["left_kidney"])
BODY, PELVIS = STRUCTURE_IDS["body_other"], STRUCTURE_IDS["renal_pelvis"]


def add_renal_pelvis(structures: np.ndarray, spacing_mm: float, rng: np.random.Generator,
                     probability: float = RENAL_PELVIS_PROBABILITY) -> np.ndarray:
    """(X, Y, Z) structure ids of one patch or map (isotropic ``spacing_mm``) -> a new structure map in which each
    kidney, with ``probability``, has the unlabelled body of its sinus (``renal_sinus``) drawn as ``renal_pelvis``,
    in half of them less a one-voxel rim (the sinus fat around the pelvis)."""
    structures = structures.copy()
    body = structures == BODY
    for kidney in KIDNEYS:
        mask = structures == kidney
        if not mask.any() or rng.random() >= probability:
            continue
        pelvis = renal_sinus(mask, body, SINUS_RADIUS_MM / spacing_mm)
        if rng.random() < 0.5:
            pelvis = ndimage.binary_erosion(pelvis)
        structures[pelvis] = PELVIS
        body &= ~pelvis
    return structures


def renal_sinus(kidney: np.ndarray, body: np.ndarray, radius: float) -> np.ndarray:
    """(X, Y, Z) bool: the largest 26-connected piece of ``body`` inside the closing of ``kidney`` (both (X, Y, Z)
    bool) by a ball of ``radius`` voxels, outside the kidney. The closing is taken in the kidney's box widened
    by the radius; the volume's faces do not erode it (a kidney cut by the patch keeps its hilum)."""
    reach = int(np.ceil(radius)) + 1
    box = tuple(slice(max(s.start - reach, 0), min(s.stop + reach, n))
                for s, n in zip(ndimage.find_objects(kidney.astype(np.uint8))[0], kidney.shape))
    grown = ndimage.distance_transform_edt(~kidney[box]) <= radius
    # Outside the volume counts as grown, so that erosion does not eat in from a face the kidney touches.
    padded = np.pad(grown, reach, constant_values=True)
    closed = (ndimage.distance_transform_edt(padded) > radius)[(slice(reach, -reach),) * 3]
    candidates = closed & ~kidney[box] & body[box]
    pieces, count = ndimage.label(candidates, structure=np.ones((3, 3, 3), dtype=bool))
    sinus = np.zeros(kidney.shape, dtype=bool)
    if count:
        sinus[box] = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
    return sinus
