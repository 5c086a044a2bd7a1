"""Fluid inside a drawn organ: a cyst drawn as part of the organ, or fluid beside it taken in.

Water-like fluid (a simple cyst, urine, bile, ascites) measures about 0 HU in every contrast phase; the Bosniak
classification (version 2019, Silverman et al., Radiology 2019;292:475-488) takes -9 to 20 HU as a simple cyst's
range in CT. Liver, spleen and kidney parenchyma are denser in every phase, except unenhanced kidneys (20-40 HU, and
lower in some scans) and fatty livers. So a thick region of an organ's label at fluid density, clearly below the
rest of the organ, is fluid inside the organ (a cyst, a dilated renal pelvis, a necrotic tumour), fluid beside it
that the network took in (the failure this check is for), or, in unenhanced CT, organ tissue as dark as fluid. Each
is worth a look; the check cannot tell which, and it changes no label. (Measured: in portal-venous CT it found
nothing in organs without fluid; in unenhanced synthetic CT, whose bias field takes parts of an organ 50 HU down,
it also finds such tissue. The model card gives the figures.)

The density is averaged over blocks of about ``BLOCK_MM`` and a Gaussian of one block, over the organ's own
voxels only, so that noise and the fat around the organ do not make a fluid region; a region one block thick (the
organ's partial-volume rim) is opened away.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..image import bounding_boxes

FLUID_MAX_HU = 20.0
"""The densest voxel average counted as fluid: the upper bound of a simple cyst (Bosniak 2019)."""

BELOW_ORGAN_HU = 15.0
"""A fluid region must also lie this far below the organ's density, so that an organ as dense as fluid (an
unenhanced kidney, a fatty liver) is not a fluid region of itself."""

BLOCK_MM = 3.0
"""The size of the blocks the density is averaged over (the model's grid)."""

MIN_ORGAN_SHARE = 0.5
"""A block counts when at least this share of its voxels is organ."""

MIN_FLUID_ML = 20.0
"""The smallest fluid region reported: about a tenth of a kidney, a 34 mm ball."""

ORGAN_DENSITY_QUANTILE = 0.75
"""The organ's density is this quantile of its averaged blocks, so that a cyst of up to three quarters of the drawn
organ does not pull it down to the cyst's."""


def fluid_region(organ: np.ndarray, ct: np.ndarray, spacing_mm: np.ndarray) -> dict | None:
    """The largest region of fluid density in an organ's label, or None when none reaches ``MIN_FLUID_ML``.

    organ: (I, J, K) bool, the organ's voxels; ct: (I, J, K) HU on the same grid (a crop around the organ will
    do); spacing_mm: (3,) voxel size along I, J, K.

    Returns {"volume_ml": organ voxels in the region's blocks, "mean_hu": their mean, "organ_hu": the organ's
    density (``ORGAN_DENSITY_QUANTILE`` of its averaged blocks)}.
    """
    factors = tuple(max(1, round(BLOCK_MM / float(s))) for s in spacing_mm)
    box = bounding_boxes(organ.view(np.uint8), max_label=1)[0]
    if box is None:
        return None
    inside, hu = _padded(organ[box], factors), _padded(ct[box], factors)
    voxels = _block_sums(inside.astype(np.float32), factors)
    hu_sums = _block_sums(np.where(inside, hu, 0).astype(np.float64), factors)
    counted = voxels >= MIN_ORGAN_SHARE * np.prod(factors)
    if not counted.any():
        return None
    block_hu = np.where(counted, hu_sums / np.maximum(voxels, 1), 0.0)
    weight = ndimage.gaussian_filter(counted.astype(np.float64), 1.0, mode="constant")
    smoothed = ndimage.gaussian_filter(block_hu, 1.0, mode="constant") / np.maximum(weight, 1e-6)
    organ_hu = float(np.quantile(smoothed[counted], ORGAN_DENSITY_QUANTILE))
    fluid = counted & (smoothed <= min(FLUID_MAX_HU, organ_hu - BELOW_ORGAN_HU))
    pieces, count = ndimage.label(ndimage.binary_opening(fluid))
    if count == 0:
        return None
    sizes = ndimage.sum_labels(voxels, pieces, index=np.arange(1, count + 1))
    largest = pieces == int(np.argmax(sizes)) + 1
    volume_ml = float(sizes.max()) * float(np.prod(spacing_mm)) / 1000.0
    if volume_ml < MIN_FLUID_ML:
        return None
    return {"volume_ml": round(volume_ml, 1), "mean_hu": round(float(hu_sums[largest].sum() / voxels[largest].sum()), 1),
            "organ_hu": round(organ_hu, 1)}


def fluid_warning(title: str, region: dict) -> str:
    """The QA sentence for a ``fluid_region`` of the organ called ``title`` (lower case)."""
    return (f"The {title} holds a {region['volume_ml']:.0f} mL region of fluid density ({region['mean_hu']:.0f} HU, the rest of the "
            f"{title} {region['organ_hu']:.0f} HU): fluid beside the {title} drawn as {title} (a cyst, bowel), a cyst or other fluid "
            f"inside it, or {title} tissue as dark as fluid; check it by eye.")


def _padded(array: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """``array`` padded with zeros (False) at the far end of each axis to a multiple of ``factors``."""
    return np.pad(array, [(0, -n % f) for n, f in zip(array.shape, factors)])


def _block_sums(array: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Sums over blocks of ``factors`` voxels of an array whose shape is a multiple of them (a reshape: scikit-image's
    ``block_reduce`` does the same, but the engine does not depend on scikit-image)."""
    (a, b, c), (f, g, h) = array.shape, factors
    return array.reshape(a // f, f, b // g, g, c // h, h).sum(axis=(1, 3, 5))
