"""Reading and writing volumes: NIfTI, NRRD and DICOM series.

The grid of every volume is the one ITK (and so 3D Slicer) reads from the same file. NIfTI voxels
are read with nibabel (SimpleITK's NIfTI reader fills a truncated file with zeros without a word)
and its header with both, which must agree (``nifti_header``); NRRD, MetaImage and DICOM series
(ITK's GDCM, JPEG-2000 included) with SimpleITK, a DICOM folder after ``dicom_series`` has chosen
and checked its files. ITK's LPS geometry is converted to the engine's RAS affine here, at the edge.
ITK's warnings stay off: the one its series reader gives (uneven slice spacing) is checked, and
refused, by ``dicom_series``, and NIfTI headers that ITK warns about are compared with nibabel's reading.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import AbdoSegError
from ..image import Image
from .atomic import atomic_path
from .declared_geometry import check_declared_geometry
from .dicom_series import read_series_headers
from .itk_grid import LPS_TO_RAS, itk_affine, to_itk
from .nifti_header import corner_shift_mm, nifti_geometry

READABLE = ".nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd or a DICOM series folder"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_VOXELS = 1024**3
"""The most voxels read: 2 GiB as int16, and the engine makes float copies of it. Checked from the
header, before any data is read, so that a header claiming 32767^3 voxels is refused, not allocated."""

sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warnings are not for users; errors still raise
nib.imageglobals.logger.setLevel(logging.CRITICAL)  # nibabel logs the header errors it then raises, as a second line


def read_image(path: str | Path, notes: list[str] | None = None) -> Image:
    """Read a 3D scalar volume from a file or a DICOM series folder.

    Returns an Image with array shape (I, J, K) and a RAS affine. Raises AbdoSegError with
    one sentence when the path is missing, unreadable, truncated, not a 3D scalar image of
    integer or real values, larger than ``MAX_VOXELS``, when its voxel-to-world transform is
    singular or not finite, or when its geometry is ambiguous (``nifti_header``, ``dicom_series``).
    Appends to ``notes`` one sentence per choice made (a DICOM folder's series, for example).
    """
    path = Path(path)
    notes = [] if notes is None else notes
    if not path.exists():
        raise AbdoSegError(f"{path} does not exist.")
    try:
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            return _read_nifti(path, notes)
        if path.is_dir():
            return _read_dicom_series(path, notes)
        itk_image = _read_itk_file(path)
    except nib.spatialimages.HeaderDataError as error:  # e.g. "data code 1 not supported": 1-bit voxels
        raise AbdoSegError(f"{path} has an unusable NIfTI header ({first_line(error)}); a 3D image of integer or real values is needed.") from None
    except (RuntimeError, OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as error:
        raise AbdoSegError(
            f"{path} could not be read as an image ({first_line(error)}); "
            f"it may be truncated or in another format (readable: {READABLE})."
        ) from None
    return _to_image(itk_image, path)


def write_image(image: Image, path: str | Path, compress: bool = True) -> None:
    """Write an Image to NIfTI or NRRD (chosen by the file name), atomically."""
    itk_image = to_itk(image)
    with atomic_path(path) as temporary:
        sitk.WriteImage(itk_image, str(temporary), useCompression=compress, compressionLevel=1)


def _read_dicom_series(folder: Path, notes: list[str]) -> Image:
    """The series of ``folder`` that ``dicom_series`` chose and checked, on the grid ITK builds from it."""
    series = read_series_headers(folder, notes)
    if series is None:
        raise AbdoSegError(f"{folder} is a folder without a DICOM series (readable: {READABLE}).")
    _check_size(folder, series.shape)
    try:  # the series reader would make a multi-frame file 4D
        with _native_messages_dropped():
            itk_image = sitk.ReadImage(str(series.files[0])) if len(series.files) == 1 else sitk.ReadImage([str(f) for f in series.files])
    except RuntimeError:
        for file in series.files:  # GDCM's message does not name the file it could not read
            try:
                _header(file)
            except RuntimeError:
                raise AbdoSegError(f"{file} is damaged or truncated (GDCM cannot read it); copy the series again.") from None
        raise
    image = _to_image(itk_image, folder)
    expected = LPS_TO_RAS @ series.affine
    # A tenth of a voxel: ITK straightens cosines written with few digits its own way; another order, flip or spacing is far more.
    if image.shape != series.shape or corner_shift_mm(image.affine, expected, image.shape) > 0.1 * image.spacing.min():
        raise AbdoSegError(
            f"{folder}: ITK built a grid ({_grid(image.affine, image.shape)}) other than the one its DICOM headers give "
            f"({_grid(expected, series.shape)}), so where its voxels lie is uncertain."
        )
    return image


@contextlib.contextmanager
def _native_messages_dropped() -> Iterator[None]:
    """Point the process's stderr (file descriptor 2) at the null device while ITK's readers run: MetaIO prints
    lines of its own ("data not read completely") outside ITK's warning switch, before the error that AbdoSeg turns
    into its one sentence."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _header(path: str | Path) -> sitk.ImageFileReader:
    """A reader of ``path`` that has read the header only (size, pixel type, geometry)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _native_messages_dropped():
        reader.ReadImageInformation()
    return reader


def _read_itk_file(path: Path) -> sitk.Image:
    reader = _header(path)
    _check_size(path, reader.GetSize())
    check_declared_geometry(path)
    with _native_messages_dropped():
        return reader.Execute()


def _read_nifti(path: Path, notes: list[str]) -> Image:
    nifti = nib.load(str(path))
    shape = nifti.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    _check_3d(path, len(shape), shape)
    _check_size(path, shape)
    _check_voxel_type(path, nifti.get_data_dtype())
    _check_affine(path, nifti.affine)
    try:
        itk_grid_affine = itk_affine(_header(path))
    except RuntimeError as error:
        raise AbdoSegError(f"{path} has a NIfTI header that ITK, and so 3D Slicer, cannot read ({first_line(error)}).") from None
    affine = nifti_geometry(path, nifti, itk_grid_affine, notes)
    array = np.asarray(nifti.dataobj.get_unscaled()).reshape(shape)
    slope, inter = nifti.dataobj.slope, nifti.dataobj.inter
    if (slope, inter) != (1.0, 0.0):
        array = array.astype(np.float32) * np.float32(slope) + np.float32(inter)
    return Image(array, affine)


def _check_3d(path: Path, dimension: int, size: tuple[int, ...]) -> None:
    if dimension != 3 or min(size) < 2:
        shape = "x".join(str(s) for s in size)
        kind = f"{dimension}D" if dimension != 3 else "2D (a single slice)"
        raise AbdoSegError(f"{path} is a {kind} image of size {shape}; a 3D volume is needed.")


def _check_size(path: Path, size: tuple[int, ...]) -> None:
    voxels = math.prod(int(n) for n in size)
    if voxels > MAX_VOXELS:
        shape = "x".join(str(n) for n in size)
        raise AbdoSegError(
            f"{path} has {shape} voxels ({voxels / 1e6:,.0f} million), more than the {MAX_VOXELS / 1e6:,.0f} million "
            f"AbdoSeg can hold in memory; crop or downsample it first."
        )


def _check_voxel_type(path: Path, dtype: np.dtype) -> None:
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise AbdoSegError(f"{path} holds {np.dtype(dtype).name} voxels; an image of integer or real values is needed.")


def _check_affine(path: Path, affine: np.ndarray) -> None:
    """Refuse a voxel-to-world transform that places no voxel: NaN or infinite, or singular."""
    if not np.isfinite(affine).all():
        raise AbdoSegError(f"{path} has NaN or infinite values in its voxel-to-world transform, so its voxels have no place in space.")
    columns = affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    # |det| equals the product of the column norms for perpendicular axes and falls to 0 as two
    # axes become parallel (or one has length 0)
    if abs(np.linalg.det(columns)) <= 1e-6 * spacing.prod():
        sizes = " x ".join(f"{s:g}" for s in spacing)
        raise AbdoSegError(
            f"{path} has a singular voxel-to-world transform (voxel size {sizes} mm, or axes that are not independent), "
            f"so its voxels have no place in space."
        )


def _to_image(itk_image: sitk.Image, path: Path) -> Image:
    if itk_image.GetNumberOfComponentsPerPixel() != 1:
        raise AbdoSegError(f"{path} has {itk_image.GetNumberOfComponentsPerPixel()} values per voxel; a scalar 3D image is needed.")
    _check_3d(path, itk_image.GetDimension(), itk_image.GetSize())
    affine = itk_affine(itk_image)
    _check_affine(path, affine)
    array = sitk.GetArrayViewFromImage(itk_image).transpose(2, 1, 0)
    _check_voxel_type(path, array.dtype)
    # The view keeps the SimpleITK buffer alive only while itk_image lives: copy out of it.
    return Image(np.array(array, copy=True), affine)


def _grid(affine: np.ndarray, shape: tuple[int, ...]) -> str:
    spacing = " x ".join(f"{v:.4g}" for v in np.linalg.norm(affine[:3, :3], axis=0))
    return f"{'x'.join(str(n) for n in shape)} voxels of {spacing} mm, {''.join(nib.aff2axcodes(affine))}, origin {np.round(affine[:3, 3], 2).tolist()}"


def first_line(error: Exception) -> str:
    """The informative line of a reader's error (ITK messages start with source locations)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not (line.startswith("Exception thrown") or ".hxx" in line or ".cxx" in line)]
    detail = (useful or lines or [type(error).__name__])[0]
    return detail.split("): ", 1)[-1].rstrip(".")[:160]
