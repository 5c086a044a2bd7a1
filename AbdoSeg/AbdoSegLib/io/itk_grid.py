"""The engine's geometry and ITK's, converted at the edge: an ``Image`` has a RAS voxel-to-world affine, ITK (and
so 3D Slicer's files) stores LPS origin, spacing and direction. SimpleITK and numpy only, so that the scene layer can
use it in Slicer's Python before AbdoSeg's own requirements are installed."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..image import Image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""(4, 4): LPS world mm -> RAS world mm (and back: it is its own inverse)."""


def to_itk(image: Image, pixel_type: int | None = None) -> sitk.Image:
    """A SimpleITK image with the Image's geometry: its array, or zeros of ``pixel_type``."""
    if pixel_type is None:
        itk_image = sitk.GetImageFromArray(np.ascontiguousarray(image.array.transpose(2, 1, 0)))
    else:
        itk_image = sitk.Image([int(n) for n in image.shape], pixel_type)
    affine_lps = LPS_TO_RAS @ image.affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    itk_image.SetSpacing(spacing.tolist())
    itk_image.SetDirection((affine_lps[:3, :3] / spacing).flatten().tolist())
    itk_image.SetOrigin(affine_lps[:3, 3].tolist())
    return itk_image


def itk_affine(itk: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """The (4, 4) RAS voxel-to-world transform of the first three axes of an ITK image or header."""
    dimension = len(itk.GetSpacing())
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = np.array(itk.GetDirection()).reshape(dimension, dimension)[:3, :3] * np.array(itk.GetSpacing()[:3])
    affine_lps[:3, 3] = itk.GetOrigin()[:3]
    return LPS_TO_RAS @ affine_lps
