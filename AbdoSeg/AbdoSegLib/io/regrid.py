"""Labelmaps moved onto another grid by world position (nearest neighbour), via SimpleITK."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..image import Image
from .image_files import to_itk


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
