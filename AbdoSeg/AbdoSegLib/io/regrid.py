"""Labelmaps moved onto another grid by world position (nearest neighbour), via SimpleITK, and
which voxels of a grid another grid's field of view covers."""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from ..image import Image
from .itk_grid import to_itk

# Voxel centres this close (in voxels) to the edge of a field of view are left to SimpleITK to judge.
_EDGE_VOXELS = 1e-3


def labels_onto_grid(labels: Image, reference: Image) -> Image:
    """``labels`` resampled onto ``reference``'s grid by world position, nearest neighbour.

    Voxels of the reference grid outside the labelmap get 0. Returns uint8 on the
    reference grid (the same Image if the grids already agree).
    """
    if labels.same_grid(reference):
        return labels.with_array(np.asarray(labels.array, dtype=np.uint8))
    source = to_itk(labels.with_array(np.asarray(labels.array, dtype=np.uint8)))
    moved = sitk.Resample(source, to_itk(reference, sitk.sitkUInt8), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return reference.with_array(sitk.GetArrayFromImage(moved).transpose(2, 1, 0).copy())


def covered_voxels(field_of_view: Image, grid: Image) -> np.ndarray:
    """The voxels of ``grid`` whose centre lies inside ``field_of_view``'s grid: bool, shape of ``grid`` (I, J, K).

    A grid's field of view is the box of its voxels (half a voxel beyond its outermost voxel
    centres), in world (RAS mm), whatever the spacing or orientation of either grid. These are
    exactly the voxels that ``labels_onto_grid(labels on field_of_view's grid, grid)`` fills from
    the labels; the others get 0 there. Only ``field_of_view``'s shape and affine are used.
    """
    if field_of_view.same_grid(grid) or _inside(field_of_view, grid):
        return np.ones(grid.shape, dtype=bool)
    ones = field_of_view.with_array(np.ones(field_of_view.shape, dtype=np.uint8))
    return labels_onto_grid(ones, grid).array.astype(bool)


def _inside(field_of_view: Image, grid: Image) -> bool:
    """True when the eight corner voxel centres of ``grid``, and so all of its voxel centres, lie well inside ``field_of_view``."""
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*[(0, n - 1) for n in grid.shape])])
    index = (np.linalg.inv(field_of_view.affine) @ grid.affine @ corners.T)[:3]
    size = np.array(field_of_view.shape, dtype=np.float64)[:, None]
    return bool(np.all((index > -0.5 + _EDGE_VOXELS) & (index < size - 0.5 - _EDGE_VOXELS)))
