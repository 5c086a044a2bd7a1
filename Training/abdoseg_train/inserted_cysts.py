"""A fluid cyst inserted into a real CT beside an organ: what a model calls it on real anatomy.

The synthetic test scans are painted by the generator the model learned from; a cyst inserted into a
real scan keeps the scan's own organs, texture and noise, and its truth is known exactly: the cyst is
background, and the organs keep their reference labels (the cyst only takes the place of what is
neither organ nor bone). Used by ``Training/scripts/inserted_cysts.py``; the model card's "A cyst
beside an organ, inserted into real CT" gives the figures.

Arrays are (I, J, K) on the CT's own grid; directions are in RAS world coordinates.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from AbdoSegLib.image import Image

CYST_HU = 8.0
"""Mean HU of the inserted cyst: water with a little protein, as a simple cyst measures (0-20 HU)."""
NOT_REPLACED_HU = 300.0
"""Voxels denser than this (bone, contrast) stay as they are: a cyst displaces soft tissue, not bone."""
BODY_HU = -500.0
"""Voxels below this (air outside the body, lung) stay as they are."""
EDGE_SIGMA_MM = 1.0
"""The cyst's wall is blurred by a Gaussian of this sigma, as a scanner's point spread blurs any edge."""
SOFT_TISSUE_HU = (0.0, 100.0)
"""Where the noise is measured: soft tissue, whose texture at a voxel's scale is mostly noise."""


def cyst_beside(organ: np.ndarray, replaceable: np.ndarray, affine: np.ndarray, direction_ras: tuple[float, float, float],
                volume_ml: float) -> np.ndarray:
    """(I, J, K) bool: a ball of ``volume_ml`` that touches ``organ`` on the side ``direction_ras`` points to.

    Its centre lies on the ray from the organ's centroid along ``direction_ras``, one radius beyond the
    last organ voxel on that ray. Only ``replaceable`` voxels (neither organ nor bone) become cyst, so
    the cyst may come out smaller than asked where it meets bone, another organ or the scan's edge.
    organ, replaceable: (I, J, K) bool; affine: (4, 4) voxel to RAS mm. Raises ValueError for an empty organ.
    """
    if not organ.any():
        raise ValueError("the organ to place a cyst beside has no voxel")
    world_step = np.asarray(direction_ras, dtype=np.float64)
    world_step /= np.linalg.norm(world_step)
    step = np.linalg.solve(affine[:3, :3], world_step) * 0.5  # voxels per 0.5 mm along the direction
    centroid = np.argwhere(organ).mean(axis=0)
    travelled, last_inside = 0.0, 0.0
    limit = float(np.linalg.norm(organ.shape)) * 2 / np.linalg.norm(step)
    while travelled < limit:
        point = np.round(centroid + step * travelled).astype(int)
        if np.any(point < 0) or np.any(point >= organ.shape):
            break
        if organ[tuple(point)]:
            last_inside = travelled
        travelled += 1.0
    radius_mm = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    centre_world = affine[:3, :3] @ (centroid + step * last_inside) + affine[:3, 3] + world_step * radius_mm
    centre = np.linalg.solve(affine[:3, :3], centre_world - affine[:3, 3])
    reach = radius_mm / np.linalg.norm(affine[:3, :3], axis=0).min() + 1  # voxels, along any axis
    low = np.clip(np.floor(centre - reach).astype(int), 0, organ.shape)
    high = np.clip(np.ceil(centre + reach).astype(int) + 1, 0, organ.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    grid = np.indices(tuple(high - low), dtype=np.float64).reshape(3, -1) + low[:, None]
    distance = np.linalg.norm(affine[:3, :3] @ grid + affine[:3, 3:4] - centre_world[:, None], axis=0)
    ball = np.zeros(organ.shape, dtype=bool)
    ball[box] = (distance < radius_mm).reshape(tuple(high - low))
    return ball & replaceable & ~organ


def replaceable_tissue(ct: Image, labels: np.ndarray) -> np.ndarray:
    """(I, J, K) bool: where a cyst may go, voxels of ``ct`` (HU) in the body, not bone, labelled no organ."""
    return (labels == 0) & (ct.array > BODY_HU) & (ct.array < NOT_REPLACED_HU)


def noise_sd(ct: Image) -> float:
    """The scan's noise (HU, one standard deviation per voxel) over soft-tissue voxels, where edges are few.

    Each voxel minus the mean of its 3x3x3 neighbourhood has, for white noise of deviation s, a deviation of
    s * sqrt(26 / 27); its robust spread (1.4826 x the median absolute deviation) ignores the edges left."""
    hu = ct.array.astype(np.float32)
    residual = (hu - ndimage.uniform_filter(hu, 3)) * np.sqrt(27.0 / 26.0)
    soft = residual[(hu > SOFT_TISSUE_HU[0]) & (hu < SOFT_TISSUE_HU[1])]
    return float(1.4826 * np.median(np.abs(soft - np.median(soft)))) if soft.size else 0.0


def paint_cyst(ct: Image, cyst: np.ndarray, noise_hu: float, rng: np.random.Generator, hu: float = CYST_HU) -> Image:
    """``ct`` (HU) with ``cyst`` ((I, J, K) bool) filled with fluid of mean ``hu`` and white noise of ``noise_hu``
    (the scan's own: ``noise_sd(ct)``, measured once per scan by the caller).

    The wall is a partial-volume blend over ``EDGE_SIGMA_MM``; voxels farther than about three sigmas from
    the cyst are unchanged. Returns a float32 image on the same grid.
    """
    hu_array = ct.array.astype(np.float32)
    fluid = hu + noise_hu * rng.standard_normal(hu_array.shape, dtype=np.float32)
    share = ndimage.gaussian_filter(cyst.astype(np.float32), EDGE_SIGMA_MM / ct.spacing)
    share[cyst] = 1.0  # the cyst itself is all fluid; only its surroundings blend
    share[share < 1e-3] = 0.0
    return ct.with_array(hu_array * (1.0 - share) + fluid * share)
