"""Preprocessing shared by inference and training.

CT (Image, any orientation) -> canonical RAS voxel order -> resampled to the model spacing
-> HU clipped to a window and scaled to [-1, 1]. Every parameter comes from a
``Preprocessing`` that is stored in the model bundle, so training and inference agree.

Grid convention: resizing an axis of n voxels to m voxels maps output index o to input
index (o + 0.5) * n / m - 0.5 (PyTorch ``align_corners=False``): both grids cover the same
field of view, and the model grid's affine follows from that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from nibabel import orientations

from ..image import Image

SLAB_SLICES = 32  # slices resampled at a time: bounds the float copy of a large scan
PAD_VALUE = -1.0  # beyond the scan: the bottom of the scaled HU window (sliding-window padding, training crops)


@dataclass(frozen=True)
class Preprocessing:
    """Parameters of the preprocessing, as stored in a model bundle.

    spacing_mm: voxel size of the model grid along R, A, S in mm.
    hu_window: (low, high) HU; values are clipped to it and scaled linearly to [-1, 1].
    """

    spacing_mm: tuple[float, float, float]
    hu_window: tuple[float, float]

    def to_dict(self) -> dict:
        return {"spacing_mm": list(self.spacing_mm), "hu_window": list(self.hu_window)}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(tuple(float(v) for v in data["spacing_mm"]), tuple(float(v) for v in data["hu_window"]))


@dataclass(frozen=True)
class ModelGrid:
    """How the model grid relates to an input grid.

    ornt: nibabel orientation that takes the input voxel axes to RAS order.
    canonical_shape: the input's shape (I, J, K) after reorientation to RAS order.
    shape: model grid shape; affine: model grid voxel-to-RAS (4, 4).
    """

    ornt: np.ndarray
    canonical_shape: tuple[int, int, int]
    shape: tuple[int, int, int]
    affine: np.ndarray

    def to_input_orientation(self, canonical: np.ndarray) -> np.ndarray:
        """An array in canonical voxel order (canonical_shape) back in the input's order.

        The result is Fortran-ordered (i fastest), the layout in which the readers return
        volumes and in which NIfTI and NRRD store them, so writing needs no transposing copy.
        """
        back = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), self.ornt)
        return np.asfortranarray(orientations.apply_orientation(canonical, back))

    def canonical_coordinates(self, axis: int, model_index: np.ndarray) -> np.ndarray:
        """Continuous canonical-input index along ``axis`` of model grid indices."""
        scale = self.canonical_shape[axis] / self.shape[axis]
        return (model_index + 0.5) * scale - 0.5

    def model_coordinates(self, axis: int, canonical_index: np.ndarray) -> np.ndarray:
        """Continuous model grid index along ``axis`` of canonical-input indices."""
        scale = self.shape[axis] / self.canonical_shape[axis]
        return (canonical_index + 0.5) * scale - 0.5


def canonical(image: Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image's array in RAS voxel order (a view where possible).

    Returns (array (I', J', K'), its affine (4, 4), ornt used).
    """
    ornt = orientations.io_orientation(image.affine)
    array = orientations.apply_orientation(image.array, ornt)
    affine = image.affine @ orientations.inv_ornt_aff(ornt, image.shape)
    return array, affine, ornt


def same_physical_grid(a: Image, b: Image, atol_mm: float = 1e-3) -> bool:
    """True when two images sample the same voxels in space, whatever their voxel order."""
    array_a, affine_a, _ = canonical(Image(np.broadcast_to(False, a.shape), a.affine))
    array_b, affine_b, _ = canonical(Image(np.broadcast_to(False, b.shape), b.affine))
    return array_a.shape == array_b.shape and np.allclose(affine_a, affine_b, atol=atol_mm)


def model_grid(image: Image, spacing_mm: tuple[float, float, float]) -> ModelGrid:
    """The model grid for ``image`` at ``spacing_mm``: same field of view, shape rounded."""
    _, canonical_affine, ornt = canonical(image)
    canonical_shape = tuple(int(n) for n in orientations.apply_orientation(np.broadcast_to(False, image.shape), ornt).shape)
    spacing = np.linalg.norm(canonical_affine[:3, :3], axis=0)
    shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(canonical_shape, spacing, spacing_mm))
    scale = np.array(canonical_shape) / np.array(shape)
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = np.diag(scale)
    voxel_map[:3, 3] = 0.5 * scale - 0.5
    return ModelGrid(ornt, canonical_shape, shape, canonical_affine @ voxel_map)


def resample(array: np.ndarray, shape: tuple[int, int, int], clip: tuple[float, float] | None = None) -> torch.Tensor:
    """Resize a 3D array to ``shape`` with linear interpolation, antialiased when shrinking.

    array: (I, J, K) any numeric dtype; returns float32 tensor of ``shape``. Values are
    clipped to ``clip`` before interpolation. Works on slabs of K so that a large scan never
    exists as a full float32 copy.
    """
    planes = []
    for k0 in range(0, array.shape[2], SLAB_SLICES):
        # Always a copy: the clip below works in place and must not touch the caller's array.
        slab = torch.from_numpy(np.array(array[:, :, k0 : k0 + SLAB_SLICES], dtype=np.float32, order="C"))
        if clip is not None:
            slab.clamp_(*clip)
        slab = slab.permute(2, 0, 1).unsqueeze(1)  # (k, 1, I, J)
        if tuple(slab.shape[2:]) != shape[:2]:
            slab = F.interpolate(slab, size=shape[:2], mode="bilinear", antialias=True, align_corners=False)
        planes.append(slab[:, 0])
    stack = torch.cat(planes)  # (K, I', J')
    if stack.shape[0] != shape[2]:
        flat = stack.reshape(1, 1, stack.shape[0], -1)
        flat = F.interpolate(flat, size=(shape[2], flat.shape[-1]), mode="bilinear", antialias=True, align_corners=False)
        stack = flat.reshape(shape[2], shape[0], shape[1])
    return stack.permute(1, 2, 0).contiguous()


def normalise(hu: torch.Tensor, hu_window: tuple[float, float]) -> torch.Tensor:
    """Clip HU to the window and scale it linearly to [-1, 1] (in place, returned)."""
    low, high = hu_window
    return hu.clamp_(low, high).sub_((low + high) / 2).div_((high - low) / 2)


def hounsfield(normalised: torch.Tensor, hu_window: tuple[float, float]) -> np.ndarray:
    """The inverse of ``normalise``: (X, Y, Z) values in [-1, 1] -> float32 numpy HU within the window."""
    low, high = hu_window
    return (normalised * ((high - low) / 2) + (low + high) / 2).numpy().astype(np.float32, copy=False)


def preprocess(image: Image, spec: Preprocessing) -> tuple[torch.Tensor, ModelGrid]:
    """CT Image -> (normalised float32 tensor of grid.shape, ModelGrid)."""
    grid = model_grid(image, spec.spacing_mm)
    array, _, _ = canonical(image)
    resampled = resample(array, grid.shape, clip=spec.hu_window)
    return normalise(resampled, spec.hu_window), grid


def labels_to_model_grid(labels: Image, grid: ModelGrid) -> np.ndarray:
    """A labelmap on the input grid, nearest-neighbour resampled onto the model grid (uint8)."""
    array, _, _ = canonical(labels)
    index = [
        np.clip(np.round(grid.canonical_coordinates(axis, np.arange(grid.shape[axis]))), 0, grid.canonical_shape[axis] - 1).astype(np.intp)
        for axis in range(3)
    ]
    return np.ascontiguousarray(array[np.ix_(*index)], dtype=np.uint8)
