"""The ``abdoseg`` command line: outputs, progress lines, refusals of bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import slicerio
import torch

from AbdoSegLib.cli import main
from AbdoSegLib.io.image_files import read_image, write_image
from AbdoSegLib.organs import ORGANS
from AbdoSegLib.outputs import LABELS_FILE, SEGMENTATION_FILE, SUMMARY_FILE, SURFACES_FOLDER
from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT
from conftest import crop

ABDOSEG = [sys.executable, "-m", "AbdoSegLib.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run the command line in a child process, as a user would."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run([*ABDOSEG, *args], capture_output=True, text=True, env=env, timeout=300)


def assert_refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
    """Exit code 1, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("abdoseg: error: ")
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def segmented(tmp_path_factory) -> Path:
    """The sample CT segmented once through the command line (in-process) with the default model,
    which finds all four organs (a random-weight model finds none)."""
    out = tmp_path_factory.mktemp("cli") / "result"
    assert main(["segment", str(SAMPLE_CT), "-o", str(out), "--progress", "none"]) == 0
    return out


def test_segment_writes_labels_on_the_input_grid(segmented):
    ct = read_image(SAMPLE_CT)
    labels = read_image(segmented / LABELS_FILE)
    assert labels.array.dtype == np.uint8
    assert labels.shape == ct.shape
    np.testing.assert_allclose(labels.affine, ct.affine, atol=1e-4)
    assert set(np.unique(labels.array)) <= {0, 1, 2, 3, 4}


def test_segment_writes_a_slicer_segmentation_with_terminology(segmented):
    info = slicerio.read_segmentation(str(segmented / SEGMENTATION_FILE))
    labels = read_image(segmented / LABELS_FILE)
    assert [s["name"] for s in info["segments"]] == [organ.title for organ in ORGANS]
    for segment, organ in zip(info["segments"], ORGANS):
        assert segment["labelValue"] == organ.label
        np.testing.assert_allclose(segment["color"], organ.color, atol=1e-5)
        assert segment["terminology"]["type"] == list(organ.type_code)
        assert segment["terminology"]["category"] == ["SCT", "123037004", "Anatomical Structure"]
        assert segment["terminology"].get("typeModifier") == (list(organ.modifier_code) if organ.modifier_code else None)
    # Same voxels and the same world geometry (slicerio reports IJK to LPS).
    np.testing.assert_array_equal(info["voxels"], labels.array)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(lps_to_ras @ info["ijkToLPS"], labels.affine, atol=1e-4)


def test_segment_summary_reports_organs_model_and_timings(segmented):
    summary = json.loads((segmented / SUMMARY_FILE).read_text())
    labels = read_image(segmented / LABELS_FILE)
    ct = read_image(SAMPLE_CT)
    for organ in ORGANS:
        entry = summary["organs"][organ.name]
        voxels = int((labels.array == organ.label).sum())
        assert voxels > 1000 and entry["voxels"] == voxels
        assert entry["volume_ml"] == pytest.approx(voxels * 27 / 1000, abs=0.01)  # 3 mm voxels
        assert summary["qa"]["volumes"][organ.name]["volume_ml"] == entry["volume_ml"]  # the QA judges the measured volume
        assert entry["mean_hu"] == pytest.approx(float(ct.array[labels.array == organ.label].mean()), abs=0.1)
        assert entry["status"] == "found" and entry["reason"] is None
        assert 0.93 <= entry["confidence"] <= 1.0  # measured 0.973-0.984
    assert summary["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert summary["model"]["path"] == str(DEFAULT_BUNDLE)
    assert len(summary["model"]["sha256"]) == 64
    assert {"read", "preprocess", "inference", "postprocess", "write", "total"} <= set(summary["timings_s"])


def test_json_progress_lines(tmp_path, tiny_bundle_path):
    result = run_cli("segment", str(SAMPLE_CT), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle_path), "--progress", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    stages = [event["stage"] for event in events]
    assert stages[0] == "read" and stages[-1] == "done"
    assert {"preprocess", "inference", "postprocess", "write"} <= set(stages)
    assert all(0.0 <= event["fraction"] <= 1.0 and isinstance(event["message"], str) for event in events)


def test_existing_output_is_kept_unless_forced(tmp_path, tiny_bundle_path):
    out = tmp_path / "out"  # a previous result: --force replaces only such a folder (test_outputs_safety.py)
    assert main(["segment", str(SAMPLE_CT), "-o", str(out), "--model", str(tiny_bundle_path), "--progress", "none"]) == 0
    previous = (out / SUMMARY_FILE).read_bytes()
    assert_refused(run_cli("segment", str(SAMPLE_CT), "-o", str(out), "--model", str(tiny_bundle_path)), str(out), "--force")
    assert (out / SUMMARY_FILE).read_bytes() == previous
    assert main(["segment", str(SAMPLE_CT), "-o", str(out), "--model", str(tiny_bundle_path), "--force", "--progress", "none"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([LABELS_FILE, SEGMENTATION_FILE, SUMMARY_FILE])


def test_a_scan_without_the_organs_draws_none_and_says_why(tmp_path, ts_example_ct, capsys):
    """The sample's slices below the kidneys: every organ is reported not found, with its reason, in the
    summary, the QA warnings and the printed table; --surfaces writes no surface and the run succeeds."""
    ct_path = tmp_path / "pelvis.nii.gz"
    write_image(crop(ts_example_ct, (slice(None), slice(None), slice(0, 60))), ct_path)
    out = tmp_path / "out"
    assert main(["segment", str(ct_path), "-o", str(out), "--surfaces", "stl", "--progress", "none"]) == 0
    assert not read_image(out / LABELS_FILE).array.any()
    assert not (out / SURFACES_FOLDER).exists()
    summary = json.loads((out / SUMMARY_FILE).read_text())
    printed = capsys.readouterr().out
    for organ in ORGANS:
        entry = summary["organs"][organ.name]
        assert (entry["status"], entry["voxels"], entry["confidence"]) == ("not found", 0, None)
        assert entry["reason"].startswith(("what the network drew", "the network labelled no voxel"))
        assert f"No {organ.title.lower()} was found: {entry['reason']}." in summary["qa"]["warnings"]
        assert any(line.split() == [organ.name, "not", "found"] for line in printed.splitlines())


def _write_nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 3.0, 1.0])), str(path))
    return path


def _sample_array() -> np.ndarray:
    return np.asarray(nib.load(str(SAMPLE_CT)).dataobj)


@pytest.mark.parametrize(
    "case, phrases",
    [
        ("truncated", ("could not be read", "truncated")),
        ("two_d", ("2D", "3D volume is needed")),
        ("four_d", ("4D", "3D volume is needed")),
        ("nan", ("NaN",)),
        ("mri", ("does not look like a CT",)),
        ("missing", ("does not exist",)),
        ("not_an_image", ("could not be read",)),
    ],
)
def test_bad_ct_is_refused_and_nothing_is_written(tmp_path, tiny_bundle_path, case, phrases):
    ct = tmp_path / "input.nii.gz"
    if case == "truncated":
        data = SAMPLE_CT.read_bytes()
        ct.write_bytes(data[: len(data) // 2])
    elif case == "two_d":
        _write_nifti(ct, _sample_array()[:, :, 50].astype(np.int16))
    elif case == "four_d":
        _write_nifti(ct, np.stack([_sample_array()] * 2, axis=-1).astype(np.int16))
    elif case == "nan":
        array = _sample_array().astype(np.float32)
        array[60, 50, 50] = np.nan
        _write_nifti(ct, array)
    elif case == "mri":
        _write_nifti(ct, (_sample_array() + 1024).astype(np.int16))  # all values >= 0: MR-like
    elif case == "not_an_image":
        ct = tmp_path / "notes.nii.gz"
        ct.write_bytes(gzip.compress(b"this is not an image"))
    out = tmp_path / "out"
    result = run_cli("segment", str(ct), "-o", str(out), "--model", str(tiny_bundle_path))
    assert_refused(result, str(ct), *phrases)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("case", ["missing", "random_bytes", "truncated"])
def test_bad_model_is_refused(tmp_path, tiny_bundle_path, case):
    model = tmp_path / "model.safetensors"
    if case == "random_bytes":
        model.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "truncated":
        data = tiny_bundle_path.read_bytes()
        model.write_bytes(data[: len(data) // 2])
    result = run_cli("segment", str(SAMPLE_CT), "-o", str(tmp_path / "out"), "--model", str(model))
    assert_refused(result, str(model))
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_refused(tmp_path, tiny_bundle_path):
    # /proc takes no new folders, even for root; a file as the parent takes none either.
    assert_refused(run_cli("segment", str(SAMPLE_CT), "-o", "/proc/abdoseg-out", "--model", str(tiny_bundle_path)), "/proc/abdoseg-out")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_refused(run_cli("segment", str(SAMPLE_CT), "-o", str(blocker / "out"), "--model", str(tiny_bundle_path)), str(blocker))


def test_cuda_device_runs_on_a_gpu_and_is_refused_without_one(tmp_path, tiny_bundle_path):
    result = run_cli("segment", str(SAMPLE_CT), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle_path), "--device", "cuda")
    if torch.cuda.is_available():
        assert result.returncode == 0, result.stderr
        assert json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())["device"].startswith("cuda")
    else:
        assert_refused(result, "CUDA")
        assert not (tmp_path / "out").exists()


def test_info_prints_bundle_metadata(tiny_bundle_path, capsys):
    assert main(["info", str(tiny_bundle_path)]) == 0
    metadata = json.loads(capsys.readouterr().out)
    assert metadata["architecture"]["name"] == "vnet"
    assert metadata["labels"] == [{"label": o.label, "name": o.name} for o in ORGANS]
