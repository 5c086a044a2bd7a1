"""The first stage's probability of an organ, as a second stage trained with ``coarse_channel`` reads it.

At inference the fine network of such a bundle reads, beside the CT, the first stage's probability of the
organ interpolated onto the fine grid (``inference/fine_stage.coarse_probability``). Running the first stage over
every training crop would cost more than the training step on a CPU, and its errors on painted CT are not
those on real CT; the patch's reference mask is degraded instead, as a 3 mm network degrades it:

- blurred by a Gaussian of sigma 0.5 to 1.5 first-stage voxels (the 3 mm grid and the interpolation),
- thresholded at 0.25 to 0.75 of the blurred mask (an organ drawn up to a voxel too wide or too narrow),
  with a soft edge (a logistic of slope 8 to 30 per unit of the blurred mask, stretched to run from 0 to 1),
- shifted by a normal error of ``SHIFT_MM`` along each axis,
- and, with ``SPILL_PROBABILITY``, a blob of probability spilled beside the organ where the reference says
  background (a neighbour drawn as the organ, such as a colon loop by a kidney), which the fine network
  must learn to reject from the CT; in ``TAIL_SHARE`` of them the blob is a tail, long along one axis (the
  first stage's over-drawn tail: a kidney's pole running 45 mm down along the structure below it),
- and, where the caller asks (``cover_sinus``), covering a kidney's renal sinus (``renal_sinus.renal_sinus``), as the
  first stage's probability does on the bundled sample, where abdoseg-vnet-1.1, its second stage following that
  probability, draws 30 mL of the sinus as right kidney (beside 220): for the fine network to take out where the CT
  shows no parenchyma.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from AbdoSegLib.inference.fine_stage import prior_channel

from .renal_sinus import SINUS_RADIUS_MM, renal_sinus

COARSE_VOXEL_MM = 3.0  # the first stage's voxel, whose blur the prior carries
SHIFT_MM = 1.5  # SD of the prior's offset from the reference along each axis
SPILL_PROBABILITY = 0.3  # of a prior with a blob beside the organ
SPILL_RADIUS_MM = (5.0, 15.0)  # the blob's semi-axes
TAIL_SHARE = 0.5  # of the blobs that are tails
TAIL_RADIUS_MM = (20.0, 45.0)  # a tail's long semi-axis


def simulated_prior(mask: np.ndarray, spacing_mm: float, rng: np.random.Generator, cover_sinus: bool = False) -> torch.Tensor:
    """A first stage's probability of the organ in ``mask`` (X, Y, Z) bool on an isotropic grid of ``spacing_mm``,
    as a (X, Y, Z) float32 tensor scaled to [-1, 1] as the CT channel is (probability 0 -> -1, 1 -> 1).
    ``cover_sinus``: the organ is a kidney, and the prior covers its renal sinus too."""
    if not mask.any():
        return prior_channel(torch.zeros(mask.shape))
    if cover_sinus:
        mask = mask | renal_sinus(mask, ~mask, SINUS_RADIUS_MM / spacing_mm)
    voxel = COARSE_VOXEL_MM / spacing_mm  # first-stage voxels in fine voxels
    blurred = ndimage.gaussian_filter(mask.astype(np.float32), sigma=rng.uniform(0.5, 1.5) * voxel)
    threshold, slope = rng.uniform(0.25, 0.75), rng.uniform(8.0, 30.0)
    low, high = _logistic(0.0, threshold, slope), _logistic(1.0, threshold, slope)
    probability = (_logistic(blurred, threshold, slope) - low) / (high - low)  # 0 far outside, 1 deep inside
    probability = ndimage.shift(probability, rng.normal(0.0, SHIFT_MM / spacing_mm, 3), order=1, mode="constant", cval=0.0)
    if rng.random() < SPILL_PROBABILITY:
        probability = np.maximum(probability, _spill(mask, spacing_mm, rng))
    return torch.from_numpy(prior_channel(np.clip(probability, 0.0, 1.0).astype(np.float32)))


def _logistic(value, threshold: float, slope: float):
    """The logistic function of ``value`` (a number or an array), 0.5 at ``threshold``."""
    return 1.0 / (1.0 + np.exp(-slope * (value - threshold)))


def _spill(mask: np.ndarray, spacing_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A soft ellipsoid (X, Y, Z) in [0, 1] centred on a random surface voxel of ``mask``, lying mostly outside it;
    a tail (``TAIL_SHARE``) has one semi-axis, along a random axis, of ``TAIL_RADIUS_MM``."""
    surface = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    centre = surface[rng.integers(len(surface))]
    radii = rng.uniform(*SPILL_RADIUS_MM, 3)
    if rng.random() < TAIL_SHARE:
        radii[rng.integers(3)] = rng.uniform(*TAIL_RADIUS_MM)
    radii = radii / spacing_mm
    grids = np.ogrid[tuple(slice(0, n) for n in mask.shape)]
    distance = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))
    return np.clip(2.0 * (1.0 - distance), 0.0, 1.0) * ~mask  # 1 within half the semi-axes, 0 beyond them
