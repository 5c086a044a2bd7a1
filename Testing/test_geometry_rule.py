"""One geometry rule: a volume lies where ITK (and so 3D Slicer) places it, or it is refused with a sentence.

Each bad input is built from real data: the ts_dicom series (20 JPEG-2000 slices, 2 mm apart)
rewritten with pydicom, and the sample CT rewritten with nibabel. Each case of issue 14 runs
``abdoseg segment`` and checks the exit code, the one sentence on stderr (a refusal, or the note of
what was chosen), that no traceback appears and that nothing of the user's changed; the inputs that
are read check the grid used. The other cases (what must still read) call the reader alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from AbdoSegLib.cli import main
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.io.dicom_series import dicom_series_files
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.outputs import SUMMARY_FILE
from AbdoSegLib.resources import SAMPLE_CT
from conftest import TEST_DATA
from test_no_traceback import patched_header

SERIES = TEST_DATA / "ts_dicom" / "dicom"
SOURCE_FILES = sorted(SERIES.iterdir())  # file name order is slice order here: instance 267..286, S -766.5 .. -804.5 mm
MAIN_UID, OTHER_UID = "2.25.1001", "2.25.1002"


# -- the user's files, before and after ----------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def segment(tmp_path: Path, ct: Path, bundle: Path, capsys) -> tuple[int, list[str], Path]:
    """``abdoseg segment ct`` into tmp_path/out: its exit code and its stderr lines; the user's files are unchanged."""
    before = snapshot(ct if ct.is_dir() else ct.parent)
    out = tmp_path / "out"
    code = main(["segment", str(ct), "-o", str(out), "--model", str(bundle), "--progress", "none"])
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    assert snapshot(ct if ct.is_dir() else ct.parent) == before
    return code, [line for line in stderr.splitlines() if line.strip()], out


def refused(tmp_path: Path, ct: Path, bundle: Path, capsys, *phrases: str) -> str:
    code, lines, out = segment(tmp_path, ct, bundle, capsys)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("abdoseg: error: "), lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


# -- DICOM fixtures --------------------------------------------------------------------------


def write_series(folder: Path, edit: Callable[[int, pydicom.Dataset], pydicom.Dataset | None] = lambda k, ds: ds,
                 uid: str = MAIN_UID, prefix: str = "") -> Path:
    """The ts_dicom slices (pixel data untouched) with ``edit(k, header)`` applied; None drops slice k."""
    folder.mkdir(exist_ok=True)
    for k, source in enumerate(SOURCE_FILES):
        dataset = edit(k, _with_uids(pydicom.dcmread(source), uid, k, prefix))
        if dataset is not None:
            dataset.save_as(folder / f"{prefix}{source.name}")
    return folder


def _with_uids(dataset: pydicom.Dataset, series_uid: str, k: int, prefix: str) -> pydicom.Dataset:
    dataset.SeriesInstanceUID = series_uid
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = f"{series_uid}.{len(prefix)}.{k + 1}"
    return dataset


def _shift(dataset: pydicom.Dataset, mm: tuple[float, float, float]) -> pydicom.Dataset:
    dataset.ImagePositionPatient = [round(float(v) + d, 6) for v, d in zip(dataset.ImagePositionPatient, mm)]
    return dataset


def test_the_series_is_read_as_before(ts_dicom_ct, tmp_path):
    """The control: rewritten with UIDs and nothing else, the series reads on its grid and needs no note."""
    notes: list[str] = []
    image = read_image(write_series(tmp_path / "dicom"), notes)
    assert notes == []
    assert image.same_grid(ts_dicom_ct, atol_mm=1e-9)
    np.testing.assert_array_equal(image.array, ts_dicom_ct.array)


def test_two_series_the_larger_ct_is_used_and_named(tmp_path, capsys, tiny_bundle_path, ts_dicom_ct):
    folder = write_series(tmp_path / "dicom")

    def second(k: int, dataset: pydicom.Dataset) -> pydicom.Dataset | None:
        dataset.SeriesDescription = "Thin slices"
        return dataset if k < 5 else None

    write_series(folder, second, uid=OTHER_UID, prefix="b_")
    code, lines, out = segment(tmp_path, folder, tiny_bundle_path, capsys)
    assert code == 0
    sentence = f"{folder} holds 2 series; used series {MAIN_UID} 'CT Body 3.0' (20 slices); others: series {OTHER_UID} 'Thin slices' (5 slices)."
    assert lines == [f"note: {sentence}"]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["assumptions"] == [sentence]
    assert summary["grid"] == {"shape": [512, 512, 20], "spacing_mm": [0.9766, 0.9766, 2.0]}
    image = read_image(folder)
    assert image.same_grid(ts_dicom_ct, atol_mm=1e-9)
    np.testing.assert_array_equal(image.array, ts_dicom_ct.array)
    assert dicom_series_files(folder) == [folder / f.name for f in reversed(SOURCE_FILES)]  # inferior to superior


def test_a_localizer_is_not_chosen_even_with_more_images(tmp_path, ts_dicom_ct):
    folder = write_series(tmp_path / "dicom", lambda k, ds: ds if k < 8 else None)

    def localizer(k: int, dataset: pydicom.Dataset) -> pydicom.Dataset:
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        return dataset

    write_series(folder, localizer, uid=OTHER_UID, prefix="l_")
    notes: list[str] = []
    image = read_image(folder, notes)
    assert image.shape == (512, 512, 8)
    assert notes == [f"{folder} holds 2 series; used series {MAIN_UID} 'CT Body 3.0' (8 slices); "
                     f"others: series {OTHER_UID} 'CT Body 3.0' (20 slices, localizer)."]


def test_two_acquisitions_at_the_same_positions_one_is_used_and_named(tmp_path, capsys, tiny_bundle_path, ts_dicom_ct):
    folder = write_series(tmp_path / "dicom")

    def later(k: int, dataset: pydicom.Dataset) -> pydicom.Dataset | None:
        dataset.AcquisitionNumber = 15
        return dataset if k % 2 == 0 else None  # 10 slices of a second pass

    write_series(folder, later, prefix="late_")
    code, lines, out = segment(tmp_path, folder, tiny_bundle_path, capsys)
    assert code == 0
    sentence = (f"{folder}: series {MAIN_UID} 'CT Body 3.0' holds 2 acquisitions at the same slice positions; "
                f"used acquisition 14 (20 slices); others: acquisition 15 (10 slices).")
    assert lines == [f"note: {sentence}"]
    assert json.loads((out / SUMMARY_FILE).read_text())["assumptions"] == [sentence]
    assert read_image(folder).same_grid(ts_dicom_ct, atol_mm=1e-9)
    assert all(not path.name.startswith("late_") for path in dicom_series_files(folder))


def test_slices_repeated_without_an_acquisition_number_to_tell_them_apart_are_refused(tmp_path, capsys, tiny_bundle_path):
    folder = write_series(tmp_path / "dicom")
    write_series(folder, lambda k, ds: ds if k == 3 else None, prefix="copy_")
    refused(tmp_path, folder, tiny_bundle_path, capsys, str(folder), "1 slice position(s) occur more than once", "-772.50 mm",
            "AcquisitionNumber does not tell them apart")


@pytest.mark.parametrize("dropped, count", [({7}, 1), ({7, 8, 9}, 3)])
def test_missing_slices_are_refused_naming_the_gap(tmp_path, capsys, tiny_bundle_path, dropped, count):
    folder = write_series(tmp_path / "dicom", lambda k, ds: None if k in dropped else ds)
    below, above = SOURCE_FILES[max(dropped) + 1].name, SOURCE_FILES[min(dropped) - 1].name
    gap = 2.0 * (count + 1)
    refused(tmp_path, folder, tiny_bundle_path, capsys, str(folder), f"about {count} slice(s) are missing between {below} and {above}",
            f"they are {gap:g} mm apart, the other slices 2 mm", "does not invent a uniform spacing")


def test_unevenly_spaced_slices_are_refused(tmp_path, capsys, tiny_bundle_path):
    folder = write_series(tmp_path / "dicom", lambda k, ds: _shift(ds, (0, 0, 0.5)) if k == 10 else ds)
    refused(tmp_path, folder, tiny_bundle_path, capsys, str(folder), "its slices are unevenly spaced (1.5 to 2.5 mm apart")


def test_a_spacing_error_within_the_tolerance_is_read(tmp_path, ts_dicom_ct):
    """0.015 mm off: below 1 % of the 2 mm spacing (0.02 mm), as decimal rounding of positions gives."""
    image = read_image(write_series(tmp_path / "dicom", lambda k, ds: _shift(ds, (0, 0, 0.015)) if k == 10 else ds))
    assert image.same_grid(ts_dicom_ct, atol_mm=1e-9)


def test_slices_of_different_orientations_are_refused(tmp_path, capsys, tiny_bundle_path):
    angle = np.radians(5)

    def rotated(k: int, dataset: pydicom.Dataset) -> pydicom.Dataset:
        if k == 12:
            dataset.ImageOrientationPatient = np.round([np.cos(angle), np.sin(angle), 0.0, -np.sin(angle), np.cos(angle), 0.0], 8).tolist()
        return dataset

    folder = write_series(tmp_path / "dicom", rotated)
    refused(tmp_path, folder, tiny_bundle_path, capsys, str(folder), "its slices have different orientations", SOURCE_FILES[12].name,
            "ImageOrientationPatient 0.9962\\0.08716\\0")


def test_cosines_that_are_not_perpendicular_are_refused(tmp_path):
    def skewed(k: int, dataset: pydicom.Dataset) -> pydicom.Dataset:
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0005, 0.9998, 0.0]  # 0.03 degrees off: ITK would straighten it its own way
        return dataset

    with pytest.raises(AbdoSegError, match=r"has ImageOrientationPatient 1\\0\\0\\0.0005\\0.9998\\0, which is not two perpendicular unit directions"):
        read_image(write_series(tmp_path / "dicom", skewed))


def test_a_slice_without_a_position_is_refused(tmp_path, capsys, tiny_bundle_path):
    def no_position(k: int, dataset: pydicom.Dataset) -> pydicom.Dataset:
        if k == 4:
            del dataset.ImagePositionPatient
        return dataset

    folder = write_series(tmp_path / "dicom", no_position)
    refused(tmp_path, folder, tiny_bundle_path, capsys, str(folder / SOURCE_FILES[4].name), "has no valid ImagePositionPatient", "does not invent one")


@pytest.mark.parametrize("kept, phrase", [(0.5, "is damaged or truncated (GDCM cannot read it)"), (400, "ends before its pixel data"),
                                          (3000, "ends before its pixel data")])
def test_a_truncated_slice_is_refused_naming_the_file(tmp_path, capsys, tiny_bundle_path, kept, phrase):
    """Cut in its pixel data (the header still reads), or in its header."""
    folder = write_series(tmp_path / "dicom")
    victim = folder / SOURCE_FILES[7].name
    data = victim.read_bytes()
    victim.write_bytes(data[: int(len(data) * kept) if kept < 1 else kept])
    refused(tmp_path, folder, tiny_bundle_path, capsys, str(victim), phrase)


def test_a_gantry_tilt_is_refused(tmp_path, capsys, tiny_bundle_path):
    """A 15 degree tilt as Siemens and Philips store it: axial planes, each slice shifted along the columns."""

    def tilted(k: int, dataset: pydicom.Dataset) -> pydicom.Dataset:
        dataset.GantryDetectorTilt = 15
        return _shift(dataset, (0.0, k * 2.0 * np.tan(np.radians(15)), 0.0))

    folder = write_series(tmp_path / "dicom", tilted)
    refused(tmp_path, folder, tiny_bundle_path, capsys, str(folder), "not stacked along the normal", "gantry tilt of about 15.0 degrees",
            "GantryDetectorTilt 15 degrees", "resample it onto a regular grid")


def test_a_tilt_given_by_the_orientation_is_a_regular_grid(tmp_path):
    """A GE-style tilted series: oblique planes stacked along their own normal; nothing to refuse."""
    tilt = np.radians(15)
    column = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
    normal = np.cross([1.0, 0.0, 0.0], column)

    def oblique(k: int, dataset: pydicom.Dataset) -> pydicom.Dataset:
        dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, *np.round(column, 8)]
        dataset.ImagePositionPatient = np.round([-249.51171875, -437.51171875, -766.5] + (19 - k) * 2.0 * normal, 6).tolist()
        return dataset

    image = read_image(write_series(tmp_path / "dicom", oblique))
    np.testing.assert_allclose(image.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-6)
    np.testing.assert_allclose(image.affine[:3, 1] / image.spacing[1], np.diag([-1, -1, 1]) @ column, atol=1e-9)


def test_a_multiframe_file_reads_on_the_grid_of_its_slices(tmp_path, ts_dicom_ct):
    """Enhanced CT (one file, frame positions in functional groups), converted from the same slices with highdicom."""
    import highdicom  # the test extra installs it (for DICOM SEG); imported here as it takes a second
    slices = []
    for source in SOURCE_FILES:
        dataset = pydicom.dcmread(source)
        dataset.decompress()
        dataset.SOPClassUID, dataset.SeriesInstanceUID = dataset.file_meta.MediaStorageSOPClassUID, MAIN_UID
        slices.append(dataset)
    enhanced = highdicom.legacy.LegacyConvertedEnhancedCTImage(slices, series_instance_uid=OTHER_UID, series_number=2,
                                                                sop_instance_uid=f"{OTHER_UID}.1", instance_number=1)
    folder = tmp_path / "enhanced"
    folder.mkdir()
    enhanced.save_as(folder / "ct.dcm")
    image = read_image(folder)
    assert image.shape == ts_dicom_ct.shape
    assert np.allclose(image.affine[:3, :3] @ [0, 0, 1], [0, 0, -2.0])  # frames run superior to inferior, as stored
    np.testing.assert_array_equal(image.array[:, :, ::-1], ts_dicom_ct.array)


# -- NIfTI fixtures --------------------------------------------------------------------------


def write_nifti(path: Path, qform: np.ndarray | None, qform_code: int, sform: np.ndarray | None, sform_code: int) -> Path:
    """The sample CT's voxels under the given header transforms (pixdim from the qform, or the sform)."""
    array = np.asanyarray(nib.load(SAMPLE_CT).dataobj)
    image = nib.Nifti1Image(array, None)
    image.header.set_zooms(np.linalg.norm((qform if qform is not None else sform)[:3, :3], axis=0))
    image.set_qform(qform, code=qform_code)
    image.set_sform(sform, code=sform_code)
    nib.save(image, str(path))
    return path


PIXDIM = 76  # byte offset of pixdim[0] in a NIfTI-1 header; pixdim[i] is 4 i bytes further
SAMPLE_AFFINE = nib.load(SAMPLE_CT).affine
MOVED = SAMPLE_AFFINE.copy()  # the same grid 5 mm to the left
MOVED[:3, 3] += (5.0, 0.0, 0.0)


@pytest.fixture
def nifti_folder(tmp_path) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    return folder


def test_a_nifti_without_orientation_is_refused(tmp_path, nifti_folder, capsys, tiny_bundle_path):
    path = write_nifti(nifti_folder / "ct.nii", SAMPLE_AFFINE, 0, None, 0)
    refused(tmp_path, path, tiny_bundle_path, capsys, str(path), "no orientation", "qform_code and sform_code are both 0", "set its qform or sform")


@pytest.mark.parametrize("axis, value, shown", [(3, 0.0, "3 x 3 x 0 mm"), (1, -3.0, "-3 x 3 x 3 mm")])
def test_a_nifti_voxel_size_of_zero_or_below_is_refused(tmp_path, nifti_folder, capsys, tiny_bundle_path, axis, value, shown):
    path = patched_header(write_nifti(nifti_folder / "ct.nii", SAMPLE_AFFINE, 1, None, 0), PIXDIM + 4 * axis, np.float32(value))
    refused(tmp_path, path, tiny_bundle_path, capsys, str(path), f"voxel size of {shown}", "geometry is ambiguous")


@pytest.mark.parametrize(
    "case, phrases",
    [
        # ITK takes the voxel size from pixdim, not from the sform: 1 mm voxels for ITK, 3 mm for nibabel
        ("pixdim_not_the_sform", ("RAS axes, 3 x 3 x 3 mm voxels", "RAS axes, 1 x 1 x 1 mm voxels", "up to 385 mm apart")),
        # qform_code 1 and sform_code 2: nibabel takes the sform, ITK the qform
        ("aligned_sform", ("origin (", "up to 5 mm apart")),
    ],
)
def test_a_nifti_that_nibabel_and_itk_place_differently_is_refused(tmp_path, nifti_folder, capsys, tiny_bundle_path, case, phrases):
    if case == "pixdim_not_the_sform":
        path = patched_header(write_nifti(nifti_folder / "ct.nii", None, 0, SAMPLE_AFFINE, 1), PIXDIM + 4, np.float32(1.0))
        for axis in (2, 3):
            patched_header(path, PIXDIM + 4 * axis, np.float32(1.0))
    else:
        path = write_nifti(nifti_folder / "ct.nii", SAMPLE_AFFINE, 1, MOVED, 2)
    refused(tmp_path, path, tiny_bundle_path, capsys, str(path), "is placed differently by nibabel", "by ITK, the reader of 3D Slicer", *phrases)


def test_a_nifti_sheared_sform_is_refused(tmp_path, nifti_folder, capsys, tiny_bundle_path):
    sheared = SAMPLE_AFFINE.copy()
    sheared[0, 2] = 1.0
    path = write_nifti(nifti_folder / "ct.nii", None, 0, sheared, 1)
    refused(tmp_path, path, tiny_bundle_path, capsys, str(path), "ITK, and so 3D Slicer, cannot read", "orthonormal")


def test_a_qform_and_sform_that_disagree_are_noted_and_itk_is_followed(nifti_folder, ts_example_ct):
    path = write_nifti(nifti_folder / "ct.nii", SAMPLE_AFFINE, 1, MOVED, 1)
    notes: list[str] = []
    image = read_image(path, notes)
    assert notes == [f"{path} has a qform and an sform that place its voxels up to 5 mm apart; used the sform, as ITK (and 3D Slicer) does."]
    np.testing.assert_allclose(image.affine, MOVED, atol=1e-5)
    np.testing.assert_array_equal(image.array, ts_example_ct.array)


def test_the_reader_refuses_with_one_sentence_without_the_command_line(tmp_path):
    """The same rule for every caller of read_image (compare, training)."""
    path = write_nifti(tmp_path / "ct.nii", SAMPLE_AFFINE, 0, None, 0)
    with pytest.raises(AbdoSegError, match="no orientation") as caught:
        read_image(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("header, phrase", [
    ({}, "voxel size or orientation (its header has no 'space directions')"),
    ({"spacings": [1.5, 1.5, 3.0]}, "orientation (its header has spacings but no 'space directions')"),
], ids=["nothing", "spacings_only"])
def test_an_nrrd_without_its_geometry_is_refused(tmp_path, capsys, header, phrase):
    import nrrd

    array = np.full((40, 40, 20), -1000, np.int16)
    array[10:30, 10:30, 5:15] = 40
    path = tmp_path / "ct.nrrd"
    nrrd.write(str(path), array, header)
    before = snapshot(tmp_path)
    assert main(["segment", str(path), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("abdoseg: error: ") and phrase in err and "which ITK, and so 3D Slicer, would invent" in err
    assert snapshot(tmp_path) == before


def test_a_metaimage_without_spacing_or_orientation_is_refused_and_one_with_them_is_read(tmp_path, capsys):
    (tmp_path / "ct.raw").write_bytes(np.full((20, 40, 40), 40, np.int16).tobytes())
    bare = "ObjectType = Image\nNDims = 3\nDimSize = 40 40 20\nElementType = MET_SHORT\nElementDataFile = ct.raw\n"
    (tmp_path / "bare.mhd").write_text(bare)
    with pytest.raises(AbdoSegError, match=r"no ElementSpacing\) or orientation \(no TransformMatrix\)"):
        read_image(tmp_path / "bare.mhd")
    (tmp_path / "full.mhd").write_text(bare.replace("ElementType", "ElementSpacing = 1.5 1.5 3\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nElementType"))
    np.testing.assert_allclose(read_image(tmp_path / "full.mhd").spacing, [1.5, 1.5, 3.0])
