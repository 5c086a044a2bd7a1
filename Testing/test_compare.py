"""``abdoseg compare``: table, JSON and CSV outputs, id maps, Slicer segmentations, refusals."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import slicerio

from AbdoSegLib.analysis.metrics import compare_labelmaps, jsonable
from AbdoSegLib.cli import main
from AbdoSegLib.commands.compare import COLUMNS, PRESETS
from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image, write_image
from AbdoSegLib.io.itk_grid import LPS_TO_RAS
from AbdoSegLib.io.seg_nrrd import write_segmentation
from AbdoSegLib.organs import ORGAN_NAMES, ORGANS, organ_by_name
from AbdoSegLib.resources import SAMPLE_REFERENCE

ABDOSEG = [sys.executable, "-m", "AbdoSegLib.cli"]
LIVER, SPLEEN = organ_by_name("liver").label, organ_by_name("spleen").label


@pytest.fixture(scope="module")
def reference() -> Image:
    """The bundled sample reference: 122x101x112 voxels of 3 mm, all four organs."""
    return read_image(SAMPLE_REFERENCE)


@pytest.fixture(scope="module")
def prediction_path(tmp_path_factory, reference) -> Path:
    """The reference with the liver moved 2 voxels along i and the spleen removed."""
    array = reference.array.copy()
    liver = array == LIVER
    array[liver] = 0
    array[np.roll(liver, 2, axis=0)] = LIVER
    array[array == SPLEEN] = 0
    path = tmp_path_factory.mktemp("compare") / "prediction.nii.gz"
    write_image(reference.with_array(array), path)
    return path


def compare(*args: str) -> int:
    return main(["compare", *[str(a) for a in args]])


def assert_refused_in_process(code: int, capsys, *phrases: str) -> None:
    """Exit code 1 and one line on stderr naming the problem."""
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("abdoseg: error: "), err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_writes_json_and_csv_and_prints_a_table(tmp_path, prediction_path, reference, capsys):
    out_json, out_csv = tmp_path / "metrics.json", tmp_path / "metrics.csv"
    assert compare(prediction_path, SAMPLE_REFERENCE, "--json", out_json, "--csv", out_csv) == 0
    expected = jsonable(compare_labelmaps(read_image(prediction_path), reference))

    metrics = json.loads(out_json.read_text())
    assert metrics == expected
    assert list(metrics) == list(ORGAN_NAMES)
    for entry in metrics.values():
        assert {"dice", "hd", "hd95", "assd", "nsd", "volume_pred_ml", "volume_ref_ml"} <= set(entry)
    assert metrics["liver"]["status"] == "compared"
    assert metrics["liver"]["hd"] == pytest.approx(6.0)  # two 3 mm voxels
    assert 0.8 < metrics["liver"]["dice"] < 1.0
    assert metrics["right_kidney"]["dice"] == 1.0 and metrics["right_kidney"]["hd"] == 0.0
    assert metrics["spleen"]["status"] == "prediction_empty"
    assert metrics["spleen"]["dice"] == 0.0 and metrics["spleen"]["hd"] == "inf"
    assert metrics["spleen"]["volume_ref_ml"] == pytest.approx(9668 * 27 / 1000, rel=1e-4)

    with open(out_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["organ"] for row in rows] == list(ORGAN_NAMES)
    assert list(rows[0]) == ["organ", *COLUMNS]
    spleen = rows[ORGAN_NAMES.index("spleen")]
    assert float(spleen["hd"]) == math.inf and float(spleen["dice"]) == 0.0
    assert float(rows[0]["dice"]) == pytest.approx(metrics["liver"]["dice"])

    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["organ", "status", "Dice", "NSD"]
    rows_printed = {line.split()[0]: line.split() for line in table[1:5]}
    assert list(rows_printed) == list(ORGAN_NAMES)
    assert rows_printed["spleen"][1:5] == ["prediction_empty", "0.000", "0.000", "inf"]
    assert rows_printed["liver"][4] == "6.0"


def test_organs_absent_on_both_sides_are_not_applicable(tmp_path, reference, capsys):
    only_liver = reference.with_array(np.where(reference.array == LIVER, LIVER, 0).astype(np.uint8))
    path = tmp_path / "liver.nii.gz"
    write_image(only_liver, path)
    assert compare(path, path, "--json", tmp_path / "m.json", "--csv", tmp_path / "m.csv") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["spleen"]["status"] == "both_empty" and metrics["spleen"]["hd"] is None and metrics["spleen"]["dice"] is None
    with open(tmp_path / "m.csv", newline="") as handle:
        spleen = [row for row in csv.DictReader(handle) if row["organ"] == "spleen"][0]
    assert spleen["dice"] == "" and spleen["hd"] == "" and spleen["status"] == "both_empty"
    assert "n/a" in [line for line in capsys.readouterr().out.splitlines() if line.startswith("spleen")][0]


def their_labels(reference: Image, theirs_to_name: dict[int, str], extra_id: int) -> Image:
    """The reference relabelled into another dataset's ids, plus a structure (``extra_id``) we do not segment."""
    array = np.zeros(reference.shape, np.uint16)
    for theirs, name in theirs_to_name.items():
        array[reference.array == organ_by_name(name).label] = theirs
    array[:5, :5, :5] = extra_id
    return reference.with_array(array)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_map_presets_turn_other_datasets_ids_into_ours(tmp_path, reference, preset):
    extra = max(PRESETS[preset]) + 7
    path = tmp_path / f"{preset}.nii.gz"
    write_image(their_labels(reference, PRESETS[preset], extra), path)
    assert compare(SAMPLE_REFERENCE, path, "--map", preset, "--json", tmp_path / "m.json") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert all(metrics[name]["dice"] == 1.0 and metrics[name]["hd"] == 0.0 for name in ORGAN_NAMES), metrics


def test_preset_ids_are_the_published_ones():
    assert PRESETS["totalsegmentator"] == {5: "liver", 2: "right_kidney", 3: "left_kidney", 1: "spleen"}
    assert PRESETS["btcv"] == PRESETS["amos"] == {6: "liver", 2: "right_kidney", 3: "left_kidney", 1: "spleen"}
    assert PRESETS["flare22"] == {1: "liver", 2: "right_kidney", 13: "left_kidney", 3: "spleen"}


@pytest.mark.parametrize("mapping", ["5:1,2:2,3:3,1:4", "5:liver, 2:right_kidney, 3:left_kidney, 1:spleen"])
def test_map_strings_with_ids_or_names(tmp_path, reference, mapping):
    path = tmp_path / "ts.nrrd"
    write_image(their_labels(reference, PRESETS["totalsegmentator"], 90), path)
    assert compare(SAMPLE_REFERENCE, path, "--map", mapping, "--json", tmp_path / "m.json") == 0
    assert {entry["dice"] for entry in json.loads((tmp_path / "m.json").read_text()).values()} == {1.0}


def test_a_partial_map_drops_the_unmapped_organs(tmp_path, reference):
    path = tmp_path / "ts.nii.gz"
    write_image(their_labels(reference, PRESETS["totalsegmentator"], 90), path)
    assert compare(SAMPLE_REFERENCE, path, "--map", "5:1", "--json", tmp_path / "m.json") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["liver"]["dice"] == 1.0
    assert all(metrics[name]["status"] == "reference_empty" for name in ORGAN_NAMES if name != "liver")


def test_slicer_segmentations_are_read_by_terminology(tmp_path, prediction_path, reference):
    segmentation = tmp_path / "reference.seg.nrrd"
    write_segmentation(reference, segmentation)
    assert compare(prediction_path, segmentation, "--json", tmp_path / "seg.json") == 0
    assert compare(prediction_path, SAMPLE_REFERENCE, "--json", tmp_path / "nii.json") == 0
    assert json.loads((tmp_path / "seg.json").read_text()) == json.loads((tmp_path / "nii.json").read_text())
    assert compare(segmentation, segmentation, "--json", tmp_path / "self.json") == 0
    assert {entry["dice"] for entry in json.loads((tmp_path / "self.json").read_text()).values()} == {1.0}


def test_terminology_wins_over_segment_names(tmp_path, reference):
    # Segments named "Segment_N", added in reverse order (other label values): only their
    # terminology (type + modifier codes) says which organ each is.
    segmentation = slicerio.create_segmentation(reference.shape, LPS_TO_RAS @ reference.affine)
    for number, organ in enumerate(reversed(ORGANS)):
        slicerio.add_segment(segmentation, reference.array == organ.label, {"name": f"Segment_{number}", "terminology": organ.terminology})
    path = tmp_path / "coded.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    assert [segment["labelValue"] for segment in slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]] == [1, 2, 3, 4]
    assert compare(SAMPLE_REFERENCE, path, "--json", tmp_path / "m.json") == 0
    assert {entry["dice"] for entry in json.loads((tmp_path / "m.json").read_text()).values()} == {1.0}


def test_slicer_segments_without_terminology_are_matched_by_name_and_overlaps_kept(tmp_path, reference):
    # Segments named as TotalSegmentator names them, with other label values, in two layers
    # (the liver overlaps an extra "liver lesion" segment that is not one of our organs).
    segmentation = slicerio.create_segmentation(reference.shape, LPS_TO_RAS @ reference.affine)  # LPS_TO_RAS is its own inverse
    names = {"liver": "Liver", "right_kidney": "kidney_right", "left_kidney": "Kidney Left", "spleen": "SPLEEN"}
    for name, segment_name in names.items():
        slicerio.add_segment(segmentation, reference.array == organ_by_name(name).label, {"name": segment_name})
    liver = reference.array == LIVER
    i, j, k = np.argwhere(liver)[len(np.argwhere(liver)) // 2]
    lesion = np.zeros_like(liver)
    lesion[i - 2 : i + 3, j - 2 : j + 3, k - 2 : k + 3] = True
    slicerio.add_segment(segmentation, lesion & liver, {"name": "liver lesion"})
    assert segmentation["voxels"].ndim == 4  # the lesion overlaps the liver: a second layer
    path = tmp_path / "named.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    assert compare(SAMPLE_REFERENCE, path, "--json", tmp_path / "m.json") == 0
    assert {entry["dice"] for entry in json.loads((tmp_path / "m.json").read_text()).values()} == {1.0}


def test_a_reference_on_another_grid_and_voxel_order_is_resampled(tmp_path, reference):
    # The reference stored as LPS-ordered NRRD (i and j flipped) with its axes permuted.
    array = np.flip(reference.array, axis=(0, 1)).transpose(1, 2, 0)
    i_size, j_size, _ = reference.shape
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = i_size - 1, j_size - 1
    permute = np.zeros((4, 4))
    permute[1, 0] = permute[2, 1] = permute[0, 2] = permute[3, 3] = 1.0  # new (a, b, c) -> old (c, a, b)
    path = tmp_path / "permuted.nrrd"
    write_image(Image(np.ascontiguousarray(array), reference.affine @ flip @ permute), path)
    assert read_image(path).shape == (j_size, reference.shape[2], i_size)
    assert compare(SAMPLE_REFERENCE, path, "--json", tmp_path / "m.json") == 0
    assert {entry["dice"] for entry in json.loads((tmp_path / "m.json").read_text()).values()} == {1.0}


# ------------------------------------------------------------------------------------ refusals


def write_nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.mark.parametrize(
    "case, phrases",
    [
        ("missing", ["does not exist"]),
        ("two_d", ["2D", "a 3D volume is needed"]),
        ("foreign_ids", ["label ids 7", "--map"]),
        ("float_values", ["non-integer"]),
        ("unknown_preset", ["'nnunet'", "preset"]),
        ("bad_pair", ["'5-1'", "theirs:ours"]),
        ("target_outside", ["'9'", "AbdoSeg's ids"]),
        ("duplicate_pair", ["their id 5 twice"]),
        ("map_misses", ["none of the ids"]),
        ("map_on_segmentation", ["--map applies to labelmaps"]),
        ("no_matching_segment", ["no segment that matches", "'Bone'"]),
        ("disjoint", ["outside the field of view"]),
        ("truncated_segmentation", ["could not be read as a Slicer segmentation"]),
    ],
)
def test_bad_input_is_refused_in_one_sentence(tmp_path, capsys, case, phrases):
    good = write_nifti(tmp_path / "good.nii.gz", read_image(SAMPLE_REFERENCE).array)
    prediction, reference, extra = good, good, []
    if case == "missing":
        reference = tmp_path / "nowhere.nii.gz"
    elif case == "two_d":
        reference = write_nifti(tmp_path / "slice.nii.gz", np.zeros((20, 20), np.uint8))
    elif case == "foreign_ids":
        prediction = write_nifti(tmp_path / "seven.nii.gz", np.full((4, 4, 4), 7, np.uint8))
    elif case == "float_values":
        reference = write_nifti(tmp_path / "float.nii.gz", np.full((4, 4, 4), 1.5, np.float32))
    elif case == "unknown_preset":
        extra = ["--map", "nnunet"]
    elif case == "bad_pair":
        extra = ["--map", "5-1,2:2"]
    elif case == "target_outside":
        extra = ["--map", "5:9"]
    elif case == "duplicate_pair":
        extra = ["--map", "5:1,5:2"]
    elif case == "map_misses":
        extra = ["--map", "flare22"]
        reference = write_nifti(tmp_path / "fives.nii.gz", np.full((4, 4, 4), 5, np.uint8))
    elif case == "map_on_segmentation":
        reference = tmp_path / "r.seg.nrrd"
        write_segmentation(read_image(SAMPLE_REFERENCE), reference)
        extra = ["--map", "totalsegmentator"]
    elif case == "no_matching_segment":
        segmentation = slicerio.create_segmentation((8, 8, 8), np.eye(4))
        slicerio.add_segment(segmentation, np.ones((8, 8, 8), bool), {"name": "Bone"})
        reference = tmp_path / "bone.seg.nrrd"
        slicerio.write_segmentation(str(reference), segmentation)
    elif case == "disjoint":
        far = np.eye(4)
        far[:3, 3] = 5000.0
        reference = write_nifti(tmp_path / "far.nii.gz", np.ones((4, 4, 4), np.uint8), far)
    elif case == "truncated_segmentation":
        whole = tmp_path / "whole.seg.nrrd"
        write_segmentation(read_image(SAMPLE_REFERENCE), whole)
        reference = tmp_path / "cut.seg.nrrd"
        reference.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "m.json"
    assert_refused_in_process(compare(prediction, reference, "--json", out, *extra), capsys, *phrases)
    assert not out.exists()


def test_existing_outputs_are_kept_unless_forced(tmp_path, capsys):
    out = tmp_path / "m.csv"
    out.write_text("mine")
    assert_refused_in_process(compare(SAMPLE_REFERENCE, SAMPLE_REFERENCE, "--csv", out), capsys, str(out), "--force")
    assert out.read_text() == "mine"
    assert compare(SAMPLE_REFERENCE, SAMPLE_REFERENCE, "--csv", out, "--force") == 0
    assert out.read_text().startswith("organ,status,dice")
    assert_refused_in_process(compare(SAMPLE_REFERENCE, SAMPLE_REFERENCE, "--json", tmp_path / "no" / "m.json"), capsys, "does not exist")


@pytest.mark.parametrize("args, phrase", [(["missing.nii.gz", str(SAMPLE_REFERENCE)], "does not exist"),
                                          ([str(SAMPLE_REFERENCE), str(SAMPLE_REFERENCE), "--map", "nnunet"], "preset")])
def test_the_command_line_refuses_without_a_traceback(args, phrase):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    result = subprocess.run([*ABDOSEG, "compare", *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("abdoseg: error: ") and phrase in lines[0], result.stderr
