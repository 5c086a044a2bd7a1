"""The NIfTI geometry rule: a volume lies where ITK (and so 3D Slicer) places it, and nibabel must agree.

nibabel reads the voxels (ITK's NIfTI reader fills a truncated file with zeros without a word);
ITK reads the same header, and where the two would place the voxels differently, or where the
header leaves the geometry to a guess, the file is refused with one sentence:

- qform_code and sform_code both 0: the header holds no orientation (nibabel then assumes a
  left-right flip that ITK does not, so one of them shows a mirrored body);
- a voxel size (pixdim 1-3) of 0, negative or not finite: both readers invent 1 mm for a 0, and a
  negative one mirrors the axis for ITK but not for nibabel;
- any other disagreement beyond ``GRID_TOLERANCE_MM``: ITK takes the voxel size from pixdim, not
  from the sform, and picks between a qform and an sform by other rules than nibabel.

When the two agree, ITK's grid is the one used (they differ by float32 rounding only).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import AbdoSegError

GRID_TOLERANCE_MM = 0.01
"""Largest distance between where two readers put a corner voxel (real files: 0 to 2e-5 mm, float32 rounding)."""


def corner_shift_mm(affine: np.ndarray, other: np.ndarray, shape: tuple[int, ...]) -> float:
    """The largest distance, in mm, between where two (4, 4) voxel-to-world transforms put the corner voxels of a ``shape`` grid."""
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*[(0, n - 1) for n in shape[:3]])]).T
    return float(np.linalg.norm((affine @ corners - other @ corners)[:3], axis=0).max())


def nifti_geometry(path: Path, nifti: nib.Nifti1Image, itk_affine: np.ndarray, notes: list[str]) -> np.ndarray:
    """The (4, 4) RAS voxel-to-world transform of a NIfTI file that nibabel and ITK read alike.

    ``itk_affine`` is ITK's reading of the same header, converted to RAS. Raises AbdoSegError with one
    sentence when the header has no orientation, an unusable voxel size, or readers that disagree;
    appends a sentence to ``notes`` when the qform and the sform disagree and ITK's choice was followed.
    """
    with nib.openers.ImageOpener(path) as file:
        header = type(nifti.header).from_fileobj(file, check=False)  # nibabel's loader "fixes" pixdim: read it as written
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    if qform_code == 0 and sform_code == 0:
        raise AbdoSegError(
            f"{path} has no orientation in its NIfTI header (qform_code and sform_code are both 0), so left and right are unknown "
            f"and readers guess differently; set its qform or sform (re-export it from the scanner's DICOM, for example)."
        )
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not (np.isfinite(pixdim).all() and (pixdim > 0).all()):
        sizes = " x ".join(f"{v:g}" for v in pixdim)
        raise AbdoSegError(
            f"{path} has a voxel size of {sizes} mm in its NIfTI header (pixdim); a size of 0 becomes 1 mm and a negative one a mirror "
            f"image in some readers and not in others, so its geometry is ambiguous; write the true voxel size."
        )
    shift = corner_shift_mm(nifti.affine, itk_affine, nifti.shape)
    if shift > GRID_TOLERANCE_MM:
        raise AbdoSegError(
            f"{path} is placed differently by nibabel ({_describe(nifti.affine)}) and by ITK, the reader of 3D Slicer ({_describe(itk_affine)}), "
            f"up to {shift:.3g} mm apart; make its qform, sform and pixdim agree (re-export it, for example)."
        )
    if qform_code > 0 and sform_code > 0:
        qform, sform = header.get_qform(), header.get_sform()
        apart = corner_shift_mm(qform, sform, nifti.shape)
        if apart > GRID_TOLERANCE_MM:
            used = "sform" if corner_shift_mm(sform, itk_affine, nifti.shape) <= corner_shift_mm(qform, itk_affine, nifti.shape) else "qform"
            notes.append(f"{path} has a qform and an sform that place its voxels up to {apart:.3g} mm apart; used the {used}, as ITK (and 3D Slicer) does.")
    return itk_affine


def _describe(affine: np.ndarray) -> str:
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    origin = ", ".join(f"{v:.4g}" for v in affine[:3, 3])
    return f"{''.join(nib.aff2axcodes(affine))} axes, {' x '.join(f'{v:.4g}' for v in spacing)} mm voxels, origin ({origin}) mm"
