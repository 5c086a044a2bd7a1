"""Smooth random fields: the texture, mixtures and shapes of synthetic CT."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_field(shape: tuple[int, ...], sigma_voxels: float, rng: np.random.Generator) -> np.ndarray:
    """A (shape) float32 Gaussian random field smoothed by ``sigma_voxels``, mean 0 and std 1."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_voxels, mode="reflect")
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)
