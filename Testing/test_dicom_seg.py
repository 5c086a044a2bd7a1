"""DICOM SEG output (``segmentation.dcm``): segments coded from the organ table, references to the source series,
and frames that equal the labelmap slice by slice, placed by position; read back with highdicom and dcmqi."""

from __future__ import annotations

import json
import platform
import random
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from AbdoSegLib import __version__
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.image import Image
from AbdoSegLib.io.dicom_seg import write_dicom_seg
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.io.itk_grid import LPS_TO_RAS
from AbdoSegLib.io.regrid import labels_onto_grid
from AbdoSegLib.organs import CATEGORY, ORGANS
from AbdoSegLib.outputs import DICOM_SEG_FILE, LABELS_FILE
from test_cli import assert_refused, run_cli

MODEL_ID = "abdoseg-vnet-test@0123456789ab"
ORGAN_OF_SEGMENT_LABEL = {organ.title: organ for organ in ORGANS}


@pytest.fixture(scope="module")
def series(test_data: Path, tmp_path_factory) -> Path:
    """ts_dicom's 20 CT images with the UIDs its anonymiser blanked put back (SOP class and instance from each file's
    meta header, study and series made up once), so that a SEG can refer to them; pixels and geometry untouched."""
    folder = tmp_path_factory.mktemp("series") / "ct"
    folder.mkdir()
    study, series_uid = generate_uid(entropy_srcs=["ts_dicom study"]), generate_uid(entropy_srcs=["ts_dicom series"])
    for file in sorted((test_data / "ts_dicom" / "dicom").glob("*.dcm")):
        dataset = pydicom.dcmread(file)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series_uid
        dataset.save_as(folder / file.name)
    return folder


@pytest.fixture(scope="module")
def shuffled_files(series: Path) -> list[Path]:
    """The series' files in an order that is neither by name nor by position."""
    files = sorted(series.glob("*.dcm"))
    random.Random(16).shuffle(files)
    return files


@pytest.fixture(scope="module")
def ct(series: Path) -> Image:
    return read_image(series)


@pytest.fixture(scope="module")
def reference(test_data: Path, ct: Image) -> Image:
    """ts_dicom's liver and spleen labels (stored LAS: the same voxel centres in another order) on the series' own
    grid, plus two exactly-known kidney boxes (ids 2 and 3) in unlabelled voxels on the patient's right and left."""
    stored = read_image(test_data / "ts_dicom" / "label.nii.gz")
    labels = labels_onto_grid(stored, ct)
    np.testing.assert_array_equal(np.bincount(labels.array.ravel()), np.bincount(stored.array.ravel()))  # nothing lost
    array = labels.array.copy()
    assert not array[150:190, 390:430, 5:12].any() and not array[330:370, 390:430, 5:12].any()
    array[150:190, 390:430, 5:12] = 2  # i grows toward the patient's left here (LPS voxel order)
    array[330:370, 390:430, 5:12] = 3
    return labels.with_array(array)


@pytest.fixture(scope="module")
def written(reference: Image, shuffled_files: list[Path], tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seg") / DICOM_SEG_FILE
    write_dicom_seg(reference, shuffled_files, path, MODEL_ID)
    return path


def masks_by_position(seg: hd.seg.Segmentation, ct: Image) -> dict[str, np.ndarray]:
    """Each segment of ``seg`` (by label) as a mask on ``ct``'s grid (I, J, K), every frame put on the slice k whose
    first voxel lies at the frame's ImagePositionPatient (this series: rows run along j, columns along i)."""
    slice_origins = LPS_TO_RAS @ ct.affine @ np.array([[0, 0, k, 1] for k in range(ct.shape[2])]).T  # LPS, (4, K)
    masks = {seg.get_segment_description(n).segment_label: np.zeros(ct.shape, dtype=bool) for n in seg.get_segment_numbers()}
    for frame, groups in zip(seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:]), seg.PerFrameFunctionalGroupsSequence):
        position = np.array(groups.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
        (k,) = np.flatnonzero(np.abs(slice_origins[:3].T - position).max(axis=1) < 1e-3)
        label = seg.get_segment_description(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber).segment_label
        assert not masks[label][:, :, k].any(), f"two frames of {label} at slice {k}"
        masks[label][:, :, k] = frame.T.astype(bool)
    return masks


def test_every_organ_present_is_a_segment_coded_from_the_organ_table(written):
    seg = hd.seg.segread(written)
    assert seg.SegmentationType == "BINARY"
    assert seg.get_segment_numbers() == [1, 2, 3, 4]
    for number, organ in zip(seg.get_segment_numbers(), ORGANS):
        description = seg.get_segment_description(number)
        assert description.segment_label == organ.title
        category = description.segmented_property_category
        kind = description.SegmentedPropertyTypeCodeSequence[0]
        assert (category.scheme_designator, category.value, category.meaning) == CATEGORY
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == organ.type_code
        modifiers = kind.get("SegmentedPropertyTypeModifierCodeSequence", [])
        assert [(m.CodingSchemeDesignator, m.CodeValue, m.CodeMeaning) for m in modifiers] == ([organ.modifier_code] if organ.modifier_code else [])
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("AbdoSeg", __version__)
        assert MODEL_ID in algorithm.AlgorithmParameters
        np.testing.assert_allclose(hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb(),
                                   255 * np.array(organ.color), atol=1.5)
    kidneys = [seg.get_segment_description(n).SegmentedPropertyTypeCodeSequence[0] for n in (2, 3)]
    assert [k.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning for k in kidneys] == ["Right", "Left"]


def test_seg_refers_to_every_source_image_its_series_and_frame_of_reference(written, shuffled_files):
    seg = hd.seg.segread(written)
    sources = [pydicom.dcmread(file, stop_before_pixels=True) for file in shuffled_files]
    assert seg.Modality == "SEG"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {s.SOPInstanceUID for s in sources}
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID


def test_frames_equal_the_labelmap_slice_by_slice_by_position_whatever_the_file_order(written, reference, ct, shuffled_files):
    seg = hd.seg.segread(written)
    masks = masks_by_position(seg, ct)
    for organ in ORGANS:
        expected = reference.array == organ.label
        assert expected.any()
        np.testing.assert_array_equal(masks[organ.title], expected, err_msg=organ.title)
    # and each frame names the source image at its position
    by_uid = {pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID: file for file in shuffled_files}
    for groups in seg.PerFrameFunctionalGroupsSequence:
        (source,) = groups.DerivationImageSequence[0].SourceImageSequence
        header = pydicom.dcmread(by_uid[source.ReferencedSOPInstanceUID], stop_before_pixels=True)
        assert list(map(float, header.ImagePositionPatient)) == list(map(float, groups.PlanePositionSequence[0].ImagePositionPatient))


def test_a_labelmap_in_another_voxel_order_on_the_same_voxels_gives_the_same_frames(test_data, shuffled_files, ct, tmp_path):
    stored = read_image(test_data / "ts_dicom" / "label.nii.gz")  # LAS: j runs the other way than the series' rows
    write_dicom_seg(stored, shuffled_files, tmp_path / DICOM_SEG_FILE, MODEL_ID)
    masks = masks_by_position(hd.seg.segread(tmp_path / DICOM_SEG_FILE), ct)
    on_series_grid = labels_onto_grid(stored, ct).array
    assert list(masks) == ["Liver", "Spleen"]  # only the organs present, numbered 1, 2
    for title, mask in masks.items():
        np.testing.assert_array_equal(mask, on_series_grid == ORGAN_OF_SEGMENT_LABEL[title].label)


@pytest.mark.parametrize("change", ["half_voxel_shift", "missing_slice", "coarser_grid"])
def test_labels_off_the_series_grid_are_refused(reference, shuffled_files, tmp_path, change):
    affine = reference.affine.copy()
    array = reference.array
    if change == "half_voxel_shift":
        affine[:3, 3] += 0.5 * affine[:3, 0]
    elif change == "missing_slice":
        array = array[:, :, 1:]
        affine[:3, 3] += affine[:3, 2]
    else:
        array = array[::2, ::2, :]
        affine[:3, :2] *= 2
    with pytest.raises(AbdoSegError, match=r"is not on the grid of the DICOM series") as refusal:
        write_dicom_seg(Image(array, affine), shuffled_files, tmp_path / DICOM_SEG_FILE, MODEL_ID)
    assert "\n" not in str(refusal.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_an_empty_labelmap_is_refused_as_a_seg_needs_a_segment(reference, shuffled_files, tmp_path):
    with pytest.raises(AbdoSegError, match="holds no organ, and a DICOM SEG needs at least one segment"):
        write_dicom_seg(reference.with_array(np.zeros(reference.shape, np.uint8)), shuffled_files, tmp_path / DICOM_SEG_FILE, MODEL_ID)
    assert list(tmp_path.iterdir()) == []


def test_a_series_whose_uids_were_blanked_is_refused(reference, test_data, tmp_path):
    files = sorted((test_data / "ts_dicom" / "dicom").glob("*.dcm"))
    with pytest.raises(AbdoSegError, match=r"has no SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID, which a DICOM SEG needs"):
        write_dicom_seg(reference, files, tmp_path / DICOM_SEG_FILE, MODEL_ID)


DCMQI_WHEELS = sys.platform == "linux" and platform.machine() == "x86_64"
"""Where PyPI has a current dcmqi wheel, the test extra installs it (pyproject.toml): there the check must run."""


@pytest.mark.skipif(not DCMQI_WHEELS, reason="dcmqi has no current wheel for this platform on PyPI")
def test_dcmqi_converts_the_seg_to_the_same_masks_and_codes(written, reference, ct, tmp_path):
    segimage2itkimage = shutil.which("segimage2itkimage", path=str(Path(sys.executable).parent))
    assert segimage2itkimage, "dcmqi is not installed (pip install -e .[test])"
    result = subprocess.run([segimage2itkimage, "--inputDICOM", str(written), "--outputDirectory", str(tmp_path),
                             "--outputType", "nifti"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    segments = [attributes for group in meta["segmentAttributes"] for attributes in group]
    assert [s["SegmentLabel"] for s in segments] == [organ.title for organ in ORGANS]
    for attributes, organ in zip(segments, ORGANS):
        assert attributes["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == organ.type_code[1]
        modifier = attributes.get("SegmentedPropertyTypeModifierCodeSequence", {}).get("CodeValue")
        assert modifier == (organ.modifier_code[1] if organ.modifier_code else None)
        mask = labels_onto_grid(read_image(tmp_path / f"{attributes['labelID']}.nii.gz"), ct).array.astype(bool)
        np.testing.assert_array_equal(mask, reference.array == organ.label, err_msg=organ.title)


def test_segment_writes_a_seg_equal_to_its_labels(series, tmp_path):
    out = tmp_path / "result"
    result = run_cli("segment", str(series), "-o", str(out), "--dicom-seg", "--progress", "none")
    assert result.returncode == 0, result.stderr
    labels = read_image(out / LABELS_FILE)
    present = [organ for organ in ORGANS if (labels.array == organ.label).any()]
    assert present  # the default model finds the liver and spleen of this CT
    seg = hd.seg.segread(out / DICOM_SEG_FILE)
    masks = masks_by_position(seg, labels)
    assert list(masks) == [organ.title for organ in present]
    for organ in present:
        np.testing.assert_array_equal(masks[organ.title], labels.array == organ.label, err_msg=organ.title)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(next(series.glob("*.dcm"))).SeriesInstanceUID


def test_dicom_seg_of_an_input_that_is_not_a_dicom_series_is_refused_before_any_work(tmp_path):
    from AbdoSegLib.resources import SAMPLE_CT

    out = tmp_path / "result"
    assert_refused(run_cli("segment", str(SAMPLE_CT), "-o", str(out), "--dicom-seg"), "--dicom-seg needs a DICOM series folder", str(SAMPLE_CT))
    assert not out.exists()


def test_a_scan_without_organs_gets_no_seg_and_a_note(series, tiny_bundle_path, tmp_path):
    out = tmp_path / "result"
    result = run_cli("segment", str(series), "-o", str(out), "--dicom-seg", "--model", str(tiny_bundle_path), "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert not read_image(out / LABELS_FILE).array.any()  # the random-weight model finds nothing
    assert not (out / DICOM_SEG_FILE).exists()
    assert f"note: no organ found in {series}, so no {DICOM_SEG_FILE}: a DICOM SEG needs at least one segment." in result.stderr


def test_dicom_seg_of_a_series_whose_uids_were_blanked_is_refused_before_any_output(test_data, tmp_path):
    out = tmp_path / "result"
    result = run_cli("segment", str(test_data / "ts_dicom" / "dicom"), "-o", str(out), "--dicom-seg")
    assert_refused(result, "has no SOPClassUID", "which a DICOM SEG needs to refer to its source images")
    assert not out.exists()


def test_without_highdicom_the_engine_imports_and_dicom_seg_says_what_to_install(series, tmp_path):
    """highdicom is an extra: the command line runs without it, and --dicom-seg then asks for it in one sentence."""
    out = tmp_path / "result"
    code = ("import sys; sys.modules['highdicom'] = None  # as if not installed\n"
            "from AbdoSegLib.cli import main; import AbdoSegLib.run_case\n"
            f"sys.exit(main(['segment', {str(series)!r}, '-o', {str(out)!r}, '--dicom-seg']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert_refused(result, "--dicom-seg needs highdicom, which is not installed; pip install abdoseg[dicom] adds it.")
    assert not out.exists()
