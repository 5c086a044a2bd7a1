"""Fluid inside a drawn organ: a cyst drawn as part of the organ, or fluid beside it taken in.

Water-like fluid (a simple cyst, urine, bile, ascites) measures about 0 HU in every contrast phase; the Bosniak
classification (version 2019, Silverman et al., Radiology 2019;292:475-488) takes -9 to 20 HU as a simple cyst's
range in CT. Liver, spleen and kidney parenchyma are denser in every phase, except unenhanced kidneys (20-40 HU, and
lower in some scans) and fatty livers. So a thick region of an organ's label at fluid density, clearly below the
rest of the organ, is either fluid inside the organ (a cyst, a dilated renal pelvis, a necrotic tumour) or fluid
beside it that the network took in (the failure this check is for). Either way it is worth a look; the check
cannot tell which, and it changes no label.

The density is averaged over blocks of about ``BLOCK_MM`` and a Gaussian of one block, over the organ's own
voxels only, so that noise and the fat around the organ do not make a fluid region; a region one block thick (the
organ's partial-volume rim) is opened away. Fluid has a wall: where the region meets the rest of the organ, the
density steps up by ``WALL_HU`` within two blocks. A slow change of density across the organ (a bias field of
the synthetic scans, beam hardening) crosses the fluid threshold without a step and is not reported.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FLUID_MAX_HU = 20.0
"""The densest voxel average counted as fluid: the upper bound of a simple cyst (Bosniak 2019)."""

BELOW_ORGAN_HU = 15.0
"""A fluid region must also lie this far below the organ's density, so that an organ as dense as fluid (an
unenhanced kidney, a fatty liver) is not a fluid region of itself."""

BLOCK_MM = 3.0
"""The size of the blocks the density is averaged over (the model's grid)."""

MIN_ORGAN_SHARE = 0.5
"""A block counts when at least this share of its voxels is organ."""

WALL_HU = BELOW_ORGAN_HU
"""The least step of density across the region's border with the rest of the organ (``_wall``) for the region to
count as fluid with a wall."""

MIN_FLUID_ML = 20.0
"""The smallest fluid region reported: about a tenth of a kidney, a 34 mm ball."""

ORGAN_DENSITY_QUANTILE = 0.75
"""The organ's density is this quantile of its averaged blocks, so that a cyst of up to three quarters of the drawn
organ does not pull it down to the cyst's."""


def fluid_region(organ: np.ndarray, ct: np.ndarray, spacing_mm: np.ndarray) -> dict | None:
    """The largest region of fluid density with a wall in an organ's label, or None when none reaches ``MIN_FLUID_ML``.

    organ: (I, J, K) bool, the organ's voxels; ct: (I, J, K) HU on the same grid (a crop around the organ will
    do); spacing_mm: (3,) voxel size along I, J, K.

    Returns {"volume_ml": organ voxels in the region's blocks, "mean_hu": their mean, "organ_hu": the organ's
    density (``ORGAN_DENSITY_QUANTILE`` of its averaged blocks), "wall_hu": the step of density at its border}.
    """
    factors = tuple(max(1, round(BLOCK_MM / float(s))) for s in spacing_mm)
    box = ndimage.find_objects(organ.astype(np.uint8))
    if not box:
        return None
    organ, ct = _padded(organ[box[0]], factors), _padded(ct[box[0]], factors)
    voxels = _block_sums(organ.astype(np.float32), factors)
    hu_sums = _block_sums(np.where(organ, ct, 0).astype(np.float64), factors)
    counted = voxels >= MIN_ORGAN_SHARE * np.prod(factors)
    if not counted.any():
        return None
    block_hu = np.where(counted, hu_sums / np.maximum(voxels, 1), 0.0)
    weight = ndimage.gaussian_filter(counted.astype(np.float64), 1.0, mode="constant")
    smoothed = ndimage.gaussian_filter(block_hu, 1.0, mode="constant") / np.maximum(weight, 1e-6)
    organ_hu = float(np.quantile(smoothed[counted], ORGAN_DENSITY_QUANTILE))
    fluid = counted & (smoothed <= min(FLUID_MAX_HU, organ_hu - BELOW_ORGAN_HU))
    pieces, count = ndimage.label(ndimage.binary_opening(fluid))
    sizes_ml = ndimage.sum_labels(voxels, pieces, index=np.arange(1, count + 1)) * float(np.prod(spacing_mm)) / 1000.0
    for index in np.argsort(-sizes_ml):
        if sizes_ml[index] < MIN_FLUID_ML:
            break
        piece = pieces == index + 1
        wall_hu = _wall(piece, counted, block_hu)
        if wall_hu >= WALL_HU:
            return {"volume_ml": round(float(sizes_ml[index]), 1), "organ_hu": round(organ_hu, 1), "wall_hu": round(wall_hu, 1),
                    "mean_hu": round(float(hu_sums[piece].sum() / voxels[piece].sum()), 1)}
    return None


def fluid_warning(title: str, region: dict) -> str:
    """The QA sentence for a ``fluid_region`` of the organ called ``title`` (lower case)."""
    return (f"The {title} holds a {region['volume_ml']:.0f} mL region of fluid density ({region['mean_hu']:.0f} HU, the rest of the "
            f"{title} {region['organ_hu']:.0f} HU): a cyst or other fluid inside the {title}, or fluid beside it drawn as {title}; "
            "check it by eye.")


def _wall(piece: np.ndarray, counted: np.ndarray, block_hu: np.ndarray) -> float:
    """The step of density (HU) where a region meets the rest of the organ: the median block of the organ two blocks
    outside ``piece``, less the median block of ``piece`` two blocks inside, where it borders the organ (blocks, not
    smoothed). Two blocks, not one: the blocks on either side of a wall share its partial volume."""
    near = ndimage.binary_dilation(piece)
    organ_next = near & counted & ~piece
    if not organ_next.any():  # the region is the whole organ: no organ to step up to
        return 0.0
    organ_beyond = ndimage.binary_dilation(near) & counted & ~near
    region_next = piece & ndimage.binary_dilation(organ_next)
    region_within = piece & ndimage.binary_dilation(region_next) & ~region_next
    outside = organ_beyond if organ_beyond.any() else organ_next  # a thin organ or region: the blocks next to the wall
    inside = region_within if region_within.any() else region_next
    return float(np.median(block_hu[outside]) - np.median(block_hu[inside]))


def _padded(array: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """``array`` padded with zeros (False) at the far end of each axis to a multiple of ``factors``."""
    return np.pad(array, [(0, -n % f) for n, f in zip(array.shape, factors)])


def _block_sums(array: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Sums over blocks of ``factors`` voxels of an array whose shape is a multiple of them."""
    (a, b, c), (f, g, h) = array.shape, factors
    return array.reshape(a // f, f, b // g, g, c // h, h).sum(axis=(1, 3, 5))
