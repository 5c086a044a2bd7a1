"""Comparisons of labelmaps whose fields of view differ: only the region both cover counts, and a note says so.

``abdoseg compare`` (command line and in process), the engine's ``compare_in_common_region`` and
``io.regrid.covered_voxels``, and the scene comparison (``slicer-core``), on boxes whose metrics
are known by hand and on the bundled sample reference cut to a smaller field of view.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk

from AbdoSegLib import scene
from AbdoSegLib.analysis.metrics import REGION, compare_in_common_region, compare_labelmaps, jsonable
from AbdoSegLib.cli import main
from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image, write_image
from AbdoSegLib.io.regrid import covered_voxels, labels_onto_grid
from AbdoSegLib.organs import ORGAN_NAMES, organ_by_name
from AbdoSegLib.resources import SAMPLE_REFERENCE

ABDOSEG = [sys.executable, "-m", "AbdoSegLib.cli"]
LIVER, SPLEEN = organ_by_name("liver").label, organ_by_name("spleen").label

# Boxes world (RAS mm): the grids below have voxel faces on these planes, so each grid holds them exactly.
# The liver spans both halves of the 2 mm grid (z 9..49 mm), the spleen only its lower half (z 3..19 mm).
BOXES = {LIVER: ((9.0, 9.0, 9.0), (39.0, 39.0, 49.0)), SPLEEN: ((41.0, 41.0, 3.0), (55.0, 55.0, 19.0))}
VOXEL_ML = 0.008  # 2 mm voxels
LIVER_VOXELS, LIVER_UPPER_VOXELS, SPLEEN_VOXELS = 15 * 15 * 20, 15 * 15 * 10, 7 * 7 * 8

# The 2 mm grid: 30^3 voxels, centres 0..58 mm, field of view -1..59 mm on each axis.
FULL_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
# Its upper half (z 29..59 mm) on a 1 mm grid in another voxel order: i -> -x, j -> +z, k -> +y.
UPPER_AFFINE = np.array([[-1.0, 0, 0, 58.5], [0, 0, 1.0, -0.5], [0, 1.0, 0, 29.5], [0, 0, 0, 1.0]])
UPPER_SHAPE = (60, 30, 60)


def box_labels(shape: tuple[int, int, int], affine: np.ndarray) -> Image:
    """Organ ids on a grid: a voxel whose centre lies in one of ``BOXES`` gets that organ's id."""
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    centres = (affine[:3, :3] @ index + affine[:3, 3:]).T
    array = np.zeros(int(np.prod(shape)), np.uint8)
    for label, (low, high) in BOXES.items():
        array[np.all((centres > low) & (centres < high), axis=1)] = label
    return Image(array.reshape(shape), affine)


@pytest.fixture(scope="module")
def boxes(tmp_path_factory) -> tuple[Path, Path]:
    """(full, upper): the boxes on the 2 mm grid, and on the 1 mm grid of its upper half (no spleen there)."""
    folder = tmp_path_factory.mktemp("fov")
    full, upper = box_labels((30, 30, 30), FULL_AFFINE), box_labels(UPPER_SHAPE, UPPER_AFFINE)
    assert np.count_nonzero(full.array == LIVER) == LIVER_VOXELS and np.count_nonzero(full.array == SPLEEN) == SPLEEN_VOXELS
    assert np.count_nonzero(upper.array == LIVER) == LIVER_UPPER_VOXELS * 8 and not np.any(upper.array == SPLEEN)
    write_image(full, folder / "full.nii.gz")
    write_image(upper, folder / "upper.nrrd")
    return folder / "full.nii.gz", folder / "upper.nrrd"


@pytest.fixture(scope="module")
def sample() -> Image:
    """The bundled sample reference: 122x101x112 voxels of 3 mm, all four organs (read-only)."""
    labels = read_image(SAMPLE_REFERENCE)
    labels.array.setflags(write=False)
    return labels


CUT = 105  # the sample reference from slice k = 105 up: the kidneys end below, the liver and spleen are cut
CUT_REGION = "compared inside the region both fields of view cover (21.0 of 336.0 mm inferior-superior, 6.25 % of "  # 7 of 112 slices


def cut_sample(sample: Image, start: int = CUT) -> Image:
    """The sample's slices k >= ``start``, on their own smaller grid."""
    affine = sample.affine.copy()
    affine[:3, 3] += sample.affine[:3, 2] * start
    return Image(np.ascontiguousarray(sample.array[:, :, start:]), affine)


def outside_ml(labels: Image, start: int = CUT) -> dict[str, float]:
    """mL of each organ below slice ``start``: what a reference cut there cannot judge."""
    below = labels.array[:, :, :start]
    return {name: np.count_nonzero(below == organ_by_name(name).label) * labels.voxel_volume_ml for name in ORGAN_NAMES}


def run_compare(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([*ABDOSEG, "compare", *[str(a) for a in args]], capture_output=True, text=True, env=env, timeout=300)


# ------------------------------------------------------------------------------ command line


def test_a_reference_covering_half_the_view_is_judged_inside_that_half_and_a_note_says_so(tmp_path, boxes):
    full, upper = boxes
    out = tmp_path / "m.json"
    result = run_compare(full, upper, "--json", out)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (note,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert note == (
        f"note: compared inside the region both fields of view cover (30.0 of 60.0 mm inferior-superior, 50 % of {full}'s field of view); "
        f"outside it, {full} has 21.1 mL of organ labels (liver 18.0, spleen 3.1) that {upper} cannot judge."
    )
    metrics = json.loads(out.read_text())
    assert list(metrics) == [*ORGAN_NAMES, REGION]
    liver = metrics["liver"]
    # Without the region the lower half of the liver counted as false positive: Dice 2 * 2250 / (4500 + 2250) = 0.667.
    assert liver["status"] == "compared" and liver["dice"] == 1.0 and liver["hd"] == 0.0 and liver["nsd"] == 1.0
    assert liver["volume_pred_ml"] == liver["volume_ref_ml"] == pytest.approx(LIVER_UPPER_VOXELS * VOXEL_ML)
    assert metrics["spleen"]["status"] == "both_empty"  # predicted only where the reference does not look: not judged
    region = metrics[REGION]
    assert region["note"] == note.removeprefix("note: ")
    assert region["prediction_share"] == 0.5
    assert region["ras_min_mm"] == [-1.0, -1.0, 29.0] and region["ras_max_mm"] == [59.0, 59.0, 59.0]
    assert region["prediction_outside_ml"] == {"liver": 18.0, "right_kidney": 0.0, "left_kidney": 0.0, "spleen": round(SPLEEN_VOXELS * VOXEL_ML, 4)}
    assert region["reference_outside_ml"] == dict.fromkeys(ORGAN_NAMES, 0.0)
    rows = [line.split() for line in result.stdout.splitlines()[1:5]]
    assert [row[0] for row in rows] == list(ORGAN_NAMES) and rows[0][2] == "1.000"  # the table: organs only


def test_a_prediction_covering_half_the_view_does_not_count_the_references_other_half_as_missed(tmp_path, boxes):
    full, upper = boxes
    out, table = tmp_path / "m.json", tmp_path / "m.csv"
    result = run_compare(upper, full, "--json", out, "--csv", table)

    assert result.returncode == 0, result.stderr
    (note,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert note == (
        f"note: compared inside the region both fields of view cover (all of {upper}'s field of view); "
        f"{full} has 21.1 mL of organ labels (liver 18.0, spleen 3.1) outside the field of view of {upper}, not counted as missed."
    )
    metrics = json.loads(out.read_text())
    assert metrics["liver"]["dice"] == 1.0 and metrics["liver"]["hd"] == 0.0
    assert metrics["liver"]["volume_ref_ml"] == pytest.approx(LIVER_UPPER_VOXELS * VOXEL_ML)  # on the prediction's 1 mm grid
    assert metrics["spleen"]["status"] == "both_empty"
    assert metrics[REGION]["prediction_share"] == 1.0
    assert metrics[REGION]["prediction_outside_ml"] == dict.fromkeys(ORGAN_NAMES, 0.0)
    assert metrics[REGION]["reference_outside_ml"]["spleen"] == pytest.approx(SPLEEN_VOXELS * VOXEL_ML, abs=1e-4)
    assert [row.split(",")[0] for row in table.read_text().splitlines()] == ["organ", *ORGAN_NAMES]


def test_fields_of_view_that_do_not_overlap_are_refused_in_one_sentence(tmp_path, boxes):
    full, _ = boxes
    far = tmp_path / "far.nii.gz"
    affine = FULL_AFFINE.copy()
    affine[:3, 3] = 500.0
    write_image(Image(box_labels((30, 30, 30), FULL_AFFINE).array, affine), far)
    result = run_compare(full, far, "--json", tmp_path / "m.json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"abdoseg: error: the field of view of {far} lies entirely outside the field of view of {full}; are they of the same scan?"
    ]
    assert not (tmp_path / "m.json").exists()


def test_a_reference_whose_organs_all_lie_beyond_the_predictions_view_is_refused(tmp_path, capsys):
    empty_lower_half, upper_liver = tmp_path / "lower.nii.gz", tmp_path / "upper_liver.nii.gz"
    write_image(Image(np.zeros((30, 30, 15), np.uint8), FULL_AFFINE), empty_lower_half)  # z -1..29 mm
    array = box_labels((30, 30, 30), FULL_AFFINE).array
    array[:, :, :15] = 0  # the liver above z = 29 mm only
    write_image(Image(array, FULL_AFFINE), upper_liver)
    assert main(["compare", str(empty_lower_half), str(upper_liver)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"abdoseg: error: the organs of {upper_liver} all lie outside the field of view of {empty_lower_half}; are they of the same scan?"
    ]


def test_a_reference_with_a_larger_view_but_no_organ_beyond_the_prediction_gives_no_note(tmp_path, boxes, capsys):
    _, upper = boxes
    full_without_lower = tmp_path / "upper_only.nii.gz"
    array = box_labels((30, 30, 30), FULL_AFFINE).array
    array[:, :, :15] = 0
    write_image(Image(array, FULL_AFFINE), full_without_lower)
    assert main(["compare", str(upper), str(full_without_lower), "--json", str(tmp_path / "m.json")]) == 0
    assert capsys.readouterr().err == ""
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert list(metrics) == list(ORGAN_NAMES) and metrics["liver"]["dice"] == 1.0


def test_the_sample_reference_cut_to_its_top_slices_agrees_with_the_whole_inside_them(tmp_path, sample, capsys):
    cut = tmp_path / "cut.nii.gz"
    write_image(cut_sample(sample), cut)
    assert main(["compare", str(SAMPLE_REFERENCE), str(cut), "--json", str(tmp_path / "m.json")]) == 0
    assert capsys.readouterr().err.startswith(f"note: {CUT_REGION}{SAMPLE_REFERENCE}'s field of view); outside it, {SAMPLE_REFERENCE} has ")
    metrics = json.loads((tmp_path / "m.json").read_text())
    for name in ("liver", "spleen"):
        assert metrics[name]["dice"] == 1.0 and metrics[name]["hd"] == 0.0 and metrics[name]["nsd"] == 1.0, name
    for name in ("right_kidney", "left_kidney"):
        assert metrics[name]["status"] == "both_empty", name
    expected = outside_ml(sample)
    assert metrics[REGION]["prediction_outside_ml"] == pytest.approx(expected, abs=1e-4)
    assert expected["right_kidney"] > 100 and expected["liver"] > 500

    # What the whole field of view made of it: every liver voxel below the cut a false positive.
    whole = compare_labelmaps(sample, labels_onto_grid(read_image(cut), sample))["liver"]
    inside, total = np.count_nonzero(sample.array[:, :, CUT:] == LIVER), np.count_nonzero(sample.array == LIVER)
    assert whole["dice"] == pytest.approx(2 * inside / (total + inside)) and whole["dice"] < 0.6
    assert metrics["liver"]["volume_pred_ml"] == pytest.approx(inside * sample.voxel_volume_ml, abs=1e-4)


# ------------------------------------------------------------------------------ engine


def test_masking_the_region_gives_the_metrics_of_both_labelmaps_cropped_to_it(sample):
    # A prediction that differs (liver moved 2 slices down, spleen 1 voxel along i), a reference cut at k = 90.
    array = np.array(sample.array)
    for label, axis, shift in ((LIVER, 2, -2), (SPLEEN, 0, 1)):
        mask = array == label
        array[mask] = 0
        array[np.roll(mask, shift, axis=axis) & (array == 0)] = label
    prediction, reference = sample.with_array(array), cut_sample(sample, 90)

    results = compare_in_common_region(prediction, labels_onto_grid(reference, prediction), covered_voxels(reference, prediction))

    cropped = compare_labelmaps(cut_sample(prediction, 90), reference)
    assert results[REGION]["prediction_share"] == pytest.approx(22 / 112)
    for name in ORGAN_NAMES:
        assert results[name] == pytest.approx(cropped[name]), name
    assert 0.8 < results["liver"]["dice"] < 1.0 and results["liver"]["hd"] == pytest.approx(6.0)


def oblique_affine(angle_z: float, angle_x: float, spacing, origin) -> np.ndarray:
    cz, sz, cx, sx = np.cos(angle_z), np.sin(angle_z), np.cos(angle_x), np.sin(angle_x)
    rotation = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


def test_covered_voxels_are_those_whose_centre_lies_in_an_oblique_field_of_view():
    grid = Image(np.zeros((30, 30, 30), np.uint8), FULL_AFFINE)
    field = Image(np.zeros((20, 15, 12), np.uint8), oblique_affine(0.5, 0.35, (1.5, 2.5, 3.0), (22.0, 12.0, 6.0)))

    covered = covered_voxels(field, grid)

    index = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    continuous = (np.linalg.inv(field.affine) @ grid.affine @ np.vstack([index, np.ones(index.shape[1])]))[:3]
    size = np.array(field.shape, dtype=np.float64)[:, None]
    inside = np.all((continuous >= -0.5) & (continuous < size - 0.5), axis=0).reshape(grid.shape)
    on_edge = np.any((np.abs(continuous + 0.5) < 1e-6) | (np.abs(continuous - size + 0.5) < 1e-6), axis=0).reshape(grid.shape)
    assert np.array_equal(covered[~on_edge], inside[~on_edge])
    assert 500 < covered.sum() < covered.size // 2
    assert covered_voxels(grid, field).all()  # the other way round: the 2 mm grid holds the whole oblique one
    assert covered_voxels(grid, grid).all()


def test_an_oblique_region_leaves_out_what_its_bounding_box_would_have_counted():
    # Liver everywhere on both sides: inside the oblique reference's view they agree voxel for voxel.
    prediction = Image(np.full((30, 30, 30), LIVER, np.uint8), FULL_AFFINE)
    field = Image(np.full((20, 15, 12), LIVER, np.uint8), oblique_affine(0.5, 0.35, (1.5, 2.5, 3.0), (22.0, 12.0, 6.0)))
    reference, covered = labels_onto_grid(field, prediction), covered_voxels(field, prediction)

    liver = compare_in_common_region(prediction, reference, covered, names=("p", "r"))["liver"]

    assert liver["dice"] == 1.0 and liver["hd"] == 0.0
    box = tuple(slice(int(np.min(i)), int(np.max(i)) + 1) for i in np.nonzero(covered))
    in_box = compare_labelmaps(Image(prediction.array[box], FULL_AFFINE), Image(reference.array[box], FULL_AFFINE))["liver"]
    assert in_box["dice"] < 0.8  # the box's corners hold prediction where the reference does not look


# ------------------------------------------------------------------------------ scene (slicer-core)


@pytest.fixture
def mrml():
    scene.register_converter_rules()
    return slicer.vtkMRMLScene()


def translation_node(mrml, offset_mm: np.ndarray):
    node = mrml.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, 3, float(offset_mm[axis]))
    node.SetMatrixTransformToParent(matrix)
    return node


def assert_same_metrics(metrics: dict, expected: dict) -> None:
    """The same organs, statuses and numbers (to 1e-9), and the same region but for the names in its note."""
    assert list(metrics) == list(expected)
    for name in ORGAN_NAMES:
        assert metrics[name].keys() == expected[name].keys()
        for key, value in expected[name].items():
            same = metrics[name][key] == (pytest.approx(value, rel=1e-9, abs=1e-9) if isinstance(value, float) else value)
            assert same, (name, key, metrics[name][key], value)
    if REGION in expected:
        for key in ("prediction_share", "ras_min_mm", "ras_max_mm", "prediction_outside_ml", "reference_outside_ml"):
            assert metrics[REGION][key] == pytest.approx(expected[REGION][key], rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("moved", [False, True], ids=["in_place", "behind_a_transform"])
def test_the_scene_comparison_judges_a_smaller_reference_inside_its_view_as_the_command_does(mrml, sample, tmp_path, moved):
    prediction = scene.segmentation_from_labelmap(sample, scene=mrml, name="prediction")
    cut = cut_sample(sample)
    if moved:  # stored 30 mm higher, brought back down by its parent transform
        offset = np.array([0.0, 0.0, 30.0])
        stored = Image(cut.array, cut.affine.copy())
        stored.affine[:3, 3] += offset
        manual = scene.segmentation_from_labelmap(stored, scene=mrml, name="manual")
        manual.SetAndObserveTransformNodeID(translation_node(mrml, -offset).GetID())
    else:
        manual = scene.segmentation_from_labelmap(cut, scene=mrml, name="manual")

    metrics = scene.compare_segmentations(prediction, manual)

    nothing_beyond = dict.fromkeys(ORGAN_NAMES, 0.0)
    expected = compare_in_common_region(sample, labels_onto_grid(cut, sample), covered_voxels(cut, sample), nothing_beyond, ("prediction", "manual"))
    assert_same_metrics(metrics, expected)
    assert metrics["liver"]["dice"] == 1.0 and metrics["right_kidney"]["status"] == "both_empty"
    assert metrics[REGION]["note"].startswith(f"{CUT_REGION}prediction's field of view); outside it, prediction has ")
    assert "that manual cannot judge." in metrics[REGION]["note"]
    write_image(cut, tmp_path / "cut.nii.gz")  # the command line says the same of the same labels
    assert main(["compare", str(SAMPLE_REFERENCE), str(tmp_path / "cut.nii.gz"), "--json", str(tmp_path / "m.json")]) == 0
    assert_same_metrics(jsonable(metrics), json.loads((tmp_path / "m.json").read_text()))


def test_the_scene_comparison_does_not_count_a_larger_references_organs_beyond_the_prediction_as_missed(mrml, sample):
    cut = cut_sample(sample)
    prediction = scene.segmentation_from_labelmap(cut, scene=mrml, name="prediction")
    truth = scene.segmentation_from_labelmap(sample, scene=mrml, name="truth")

    metrics = scene.compare_segmentations(prediction, truth)

    assert metrics["liver"]["dice"] == 1.0 and metrics["spleen"]["hd"] == 0.0
    assert metrics["right_kidney"]["status"] == "both_empty"
    assert metrics[REGION]["prediction_share"] == 1.0
    assert metrics[REGION]["reference_outside_ml"] == pytest.approx(outside_ml(sample), abs=1e-9)
    assert metrics[REGION]["note"].endswith("outside the field of view of prediction, not counted as missed.")


def test_a_reference_without_a_view_of_its_own_counts_as_covering_the_prediction(mrml, sample):
    prediction = scene.segmentation_from_labelmap(sample, scene=mrml, name="prediction")
    manual = scene.segmentation_from_labelmap(cut_sample(sample), scene=mrml, name="manual")
    manual.GetSegmentation().SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), "")
    metrics = scene.compare_segmentations(prediction, manual)
    assert REGION not in metrics
    assert metrics["liver"]["dice"] < 0.6  # judged on the whole grid, as before this rule

