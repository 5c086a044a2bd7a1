"""Image I/O: NIfTI / NRRD round trips, the DICOM series' geometry, and refusals of bad inputs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image, write_image
from AbdoSegLib.model.preprocessing import canonical
from AbdoSegLib.resources import SAMPLE_CT
from conftest import box_corners


def _affine(matrix, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = origin
    return affine


AFFINES = {
    # voxel axes along R, A, S
    "ras": _affine(np.diag([0.8, 0.9, 2.5]), [-10.25, 20.5, 30.0]),
    # DICOM's usual order: voxel axes along L, P, S
    "lps": _affine(np.diag([-0.8, -0.9, 2.5]), [10.25, -20.5, 30.0]),
    # axes permuted and flipped: i -> A, j -> I (inferior), k -> L
    "permuted": _affine([[0, 0, -2.5], [0.8, 0, 0], [0, -0.9, 0]], [10.0, -20.0, 30.0]),
    # a real rotation (tilted gantry / oblique acquisition) with anisotropic voxels
    "oblique": _affine(Rotation.from_euler("xyz", [10, -20, 35], degrees=True).as_matrix() @ np.diag([0.7, 1.3, 3.0]), [-12.25, 40.5, -7.75]),
}

# NIfTI-1 stores the voxel-to-world transform as float32 (srow_x/y/z): a millimetre value near
# 50 carries a rounding error of ~3e-6 mm. NRRD writes doubles as text: exact to ~1e-15.
NIFTI_AFFINE_ATOL = 1e-5
NRRD_AFFINE_ATOL = 1e-12


def _random_ct(dtype=np.int16, shape=(7, 9, 11)) -> np.ndarray:
    rng = np.random.default_rng(7)
    if np.dtype(dtype).kind == "f":
        return (rng.normal(size=shape) * 300).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1024), min(info.max, 3000), size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("orientation", AFFINES)
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_round_trip_keeps_array_and_affine(tmp_path, suffix, orientation):
    array, affine = _random_ct(), AFFINES[orientation]
    path = tmp_path / f"ct{suffix}"
    write_image(Image(array, affine), path)
    back = read_image(path)
    assert back.array.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back.array, array)
    atol = NRRD_AFFINE_ATOL if suffix == ".nrrd" else NIFTI_AFFINE_ATOL
    np.testing.assert_allclose(back.affine, affine, rtol=0, atol=atol)
    # nothing but the output is left in the folder (the temporary name was renamed)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_round_trip_keeps_the_voxel_type(tmp_path, suffix, dtype):
    array = _random_ct(dtype)
    write_image(Image(array, AFFINES["oblique"]), tmp_path / f"x{suffix}")
    back = read_image(tmp_path / f"x{suffix}")
    assert back.array.dtype == array.dtype
    np.testing.assert_array_equal(back.array, array)


@pytest.mark.parametrize("orientation", AFFINES)
def test_written_nifti_means_the_same_to_nibabel(tmp_path, orientation):
    """Not only self-consistent: another reader sees the same RAS affine and the same voxel order."""
    array, affine = _random_ct(), AFFINES[orientation]
    write_image(Image(array, affine), tmp_path / "ct.nii.gz")
    other = nib.load(tmp_path / "ct.nii.gz")
    np.testing.assert_allclose(other.affine, affine, rtol=0, atol=NIFTI_AFFINE_ATOL)
    np.testing.assert_array_equal(np.asanyarray(other.dataobj), array)


@pytest.mark.parametrize("orientation", AFFINES)
def test_written_nrrd_means_the_same_to_pynrrd(tmp_path, orientation):
    """NRRD is stored in LPS: pynrrd must find the LPS form of the RAS affine."""
    array, affine = _random_ct(), AFFINES[orientation]
    write_image(Image(array, affine), tmp_path / "ct.nrrd")
    data, header = nrrd.read(str(tmp_path / "ct.nrrd"))
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :4]
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(np.asarray(header["space directions"], dtype=float), lps[:, :3].T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(header["space origin"], dtype=float), lps[:, 3], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(data, array)


def test_real_nifti_reads_like_nibabel_reads_it():
    image = read_image(SAMPLE_CT)
    other = nib.load(SAMPLE_CT)
    assert image.shape == (122, 101, 112)
    np.testing.assert_allclose(image.affine, other.affine, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(image.array, np.asanyarray(other.dataobj))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")


def test_dicom_series_shape_spacing_and_orientation(ts_dicom_ct):
    assert ts_dicom_ct.shape == (512, 512, 20)
    np.testing.assert_allclose(ts_dicom_ct.spacing, (0.977, 0.977, 2.0), atol=5e-4)
    # DICOM rows/columns run to the patient's left and posterior
    assert nib.aff2axcodes(ts_dicom_ct.affine) == ("L", "P", "S")
    # rescale slope / intercept applied: Hounsfield units, air at -1024
    assert ts_dicom_ct.array.min() == -1024


def test_dicom_series_lies_on_the_grid_of_its_label(ts_dicom_ct, test_data):
    """Same physical grid, different voxel order (DICOM reads LPS, the label is stored LAS)."""
    label = read_image(test_data / "ts_dicom" / "label.nii.gz")
    assert nib.aff2axcodes(label.affine) == ("L", "A", "S")
    assert not np.allclose(label.affine, ts_dicom_ct.affine)  # the voxel orders really differ
    # the field of view's corners are the same world points ...
    np.testing.assert_allclose(box_corners(ts_dicom_ct.affine, ts_dicom_ct.shape), box_corners(label.affine, label.shape), atol=1e-3)
    # ... and in canonical voxel order the two grids are identical
    ct_array, ct_affine, _ = canonical(ts_dicom_ct)
    label_array, label_affine, _ = canonical(label)
    np.testing.assert_allclose(ct_affine, label_affine, rtol=0, atol=1e-4)
    assert ct_array.shape == label_array.shape
    # and the anatomy agrees voxel by voxel: liver and spleen labels cover soft tissue
    # (0..250 HU); a left-right or front-back flip of either drops this to ~0.7 or less.
    for organ in (1, 4):
        hu = ct_array[label_array == organ]
        assert hu.size > 10000
        assert ((hu > 0) & (hu < 250)).mean() > 0.95, f"label {organ} does not lie on soft tissue"


# --- refusals -------------------------------------------------------------------------


def _assert_refused(path: Path) -> str:
    with pytest.raises(AbdoSegError) as caught:
        read_image(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_truncated_file_is_refused(tmp_path, ts_example_ct, suffix):
    """The bytes of a real scan cut in half, as after an interrupted copy or download.

    A reader that fills the missing half with zeros (and segments half a body) fails here.
    """
    whole = tmp_path / f"whole{suffix}"
    write_image(ts_example_ct, whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    _assert_refused(cut)


def test_truncated_real_nifti_is_refused(tmp_path):
    data = SAMPLE_CT.read_bytes()
    cut = tmp_path / "ct.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    _assert_refused(cut)


def test_2d_image_is_refused(tmp_path):
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 12), np.int16), np.eye(4)), path)
    assert "2D" in _assert_refused(path)


def test_4d_image_is_refused(tmp_path):
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 5, 3), np.int16), np.eye(4)), path)
    assert "4D" in _assert_refused(path)


def test_single_slice_volume_is_refused(tmp_path):
    path = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 1), np.int16), np.eye(4)), path)
    _assert_refused(path)


def test_folder_without_dicom_is_refused(tmp_path):
    folder = tmp_path / "not_dicom"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here\n")
    assert "DICOM" in _assert_refused(folder)


def test_missing_path_is_refused(tmp_path):
    assert "does not exist" in _assert_refused(tmp_path / "nothing_here.nii.gz")


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.nii.gz"
    path.write_bytes(np.random.default_rng(3).bytes(5000))
    _assert_refused(path)
