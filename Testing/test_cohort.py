"""Cohorts: ``abdoseg segment`` over many scans (folders, DICOM trees, lists), resumed, in worker processes and on Ray.

The mechanics run with the tiny random-weight bundle on small crops of the sample CT (a fraction of a second a case);
where the labels matter (workers, Ray) the default model segments three crops of the sample.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pydicom
import pytest
import torch

from AbdoSegLib.cli import main
from AbdoSegLib.cohort.inputs import find_cases, is_cohort, unique_ids
from AbdoSegLib.cohort.ray_runner import actor_plan
from AbdoSegLib.cohort.table import COLUMNS, write_table
from AbdoSegLib.io.image_files import write_image
from AbdoSegLib.model.bundle import file_sha256, save_bundle
from AbdoSegLib.model.vnet import VNet
from AbdoSegLib.organs import ORGANS
from AbdoSegLib.outputs import LABELS_FILE, SUMMARY_FILE
from conftest import TINY_CONFIG, TINY_PATCH, TINY_PREPROCESSING, crop, interruptible

BROKEN = "scan03"


def read_table(root: Path) -> dict[str, dict]:
    """cohort.csv as {case: row}, checking its header and that cohort.json holds the same cases and statuses."""
    with open(root / "cohort.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == COLUMNS
        rows = {row["case"]: row for row in reader}
    document = json.loads((root / "cohort.json").read_text())
    assert {row["case"]: row["status"] for row in document["cases"]} == {case: row["status"] for case, row in rows.items()}
    return rows


def labels(root: Path, case: str) -> np.ndarray:
    return np.asarray(nib.load(str(root / case / LABELS_FILE)).dataobj)


def segment(*args: str) -> int:
    return main(["segment", *[str(arg) for arg in args]])


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def scans(tmp_path_factory, ts_example_ct) -> Path:
    """A folder of 10 small scans (crops of the sample, 40-49 x 50 x 40 voxels of 3 mm), scan03 truncated."""
    folder = tmp_path_factory.mktemp("cohort") / "scans"
    folder.mkdir()
    for index in range(10):
        write_image(crop(ts_example_ct, (slice(10, 50 + index), slice(10, 60), slice(20, 60))), folder / f"scan{index:02d}.nii.gz")
    broken = folder / f"{BROKEN}.nii.gz"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    return folder


@pytest.fixture(scope="module")
def real_scans(tmp_path_factory, ts_example_ct) -> list[Path]:
    """Three crops of the sample CT that hold all four organs, for the default model."""
    folder = tmp_path_factory.mktemp("real")
    boxes = [(slice(None), slice(None), slice(20, 112)), (slice(0, 112), slice(None), slice(None)), (slice(10, 122), slice(0, 96), slice(10, 112))]
    paths = []
    for index, box in enumerate(boxes):
        write_image(crop(ts_example_ct, box), folder / f"real{index}.nii.gz")
        paths.append(folder / f"real{index}.nii.gz")
    return paths


@pytest.fixture(scope="module")
def real_local(tmp_path_factory, real_scans) -> Path:
    """The three real scans segmented by the default model in this process (one worker)."""
    root = tmp_path_factory.mktemp("local") / "out"
    assert segment(*real_scans, "-o", root, "--progress", "none") == 0
    return root


def test_a_folder_of_ten_scans_one_broken_gives_nine_done_one_failed_and_resumes(tmp_path, scans, tiny_bundle_path, capsys):
    root = tmp_path / "out"
    assert segment(scans, "-o", root, "--model", tiny_bundle_path) == 1
    printed = capsys.readouterr()
    assert last_line(printed.out) == f"10 cases: 9 done, 1 failed, 0 skipped; table {root / 'cohort.csv'}"
    assert last_line(printed.err) == f"abdoseg: error: 1 of 10 cases failed; each one's reason is in {root / 'cohort.csv'}."
    rows = read_table(root)
    assert list(rows) == [f"scan{index:02d}" for index in range(10)]
    # The failure's sentence is the one a single run on that file gives.
    assert segment(scans / f"{BROKEN}.nii.gz", "-o", tmp_path / "single", "--model", tiny_bundle_path) == 1
    sentence = capsys.readouterr().err.strip().removeprefix("abdoseg: error: ")
    assert rows[BROKEN]["status"] == "failed" and rows[BROKEN]["message"] == sentence and "truncated" in sentence
    assert not (root / BROKEN).exists()
    sha = file_sha256(tiny_bundle_path)
    for case, row in rows.items():
        if case == BROKEN:
            continue
        summary = json.loads((root / case / SUMMARY_FILE).read_text())
        assert row["status"] == "done" and row["message"] == ""
        assert row["input"] == str(scans / f"{case}.nii.gz") == summary["input"]
        assert (row["model_sha256"], row["model_id"]) == (sha, summary["model"]["id"])
        for organ in ORGANS:
            assert float(row[f"{organ.name}_volume_ml"]) == summary["organs"][organ.name]["volume_ml"]
        assert row["qa_warnings"] == " | ".join(summary["qa"]["warnings"])
        assert float(row["seconds"]) > 0
    written = {case: (root / case / SUMMARY_FILE).stat().st_mtime_ns for case in rows if case != BROKEN}

    # Second run: the nine are skipped with their numbers read back, the broken one is tried again.
    assert segment(scans, "-o", root, "--model", tiny_bundle_path, "--progress", "json") == 1
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["event"], e["case"]) for e in events[:-1]] == [("skipped", case) for case in written] + [("started", BROKEN), ("failed", BROKEN)]
    assert events[-1]["event"] == "finished" and (events[-1]["done"], events[-1]["failed"], events[-1]["skipped"]) == (0, 1, 9)
    again = read_table(root)
    assert {case: row["status"] for case, row in again.items()} == {case: "failed" if case == BROKEN else "skipped" for case in rows}
    assert all(again[case]["liver_volume_ml"] == rows[case]["liver_volume_ml"] for case in written)
    assert {case: (root / case / SUMMARY_FILE).stat().st_mtime_ns for case in written} == written

    # --force segments them again.
    assert segment(scans, "-o", root, "--model", tiny_bundle_path, "--force", "--progress", "none") == 1
    assert [row["status"] for row in read_table(root).values()].count("done") == 9
    assert all((root / case / SUMMARY_FILE).stat().st_mtime_ns != mtime for case, mtime in written.items())


def test_a_result_of_another_model_is_kept_unless_forced(tmp_path, scans, tiny_bundle_path, capsys):
    root = tmp_path / "out"
    cases = [scans / "scan00.nii.gz", scans / "scan01.nii.gz"]
    assert segment(*cases, "-o", root, "--model", tiny_bundle_path, "--progress", "none") == 0
    other = tmp_path / "other.safetensors"
    torch.manual_seed(7)
    save_bundle(other, VNet(TINY_CONFIG), TINY_PREPROCESSING, TINY_PATCH, name="other-tiny", created="2024-06-02T00:00:00Z")
    before = labels(root, "scan00")
    assert segment(*cases, "-o", root, "--model", other, "--progress", "none") == 1
    rows = read_table(root)
    assert all(row["status"] == "failed" and "holds a result of another model" in row["message"] and "--force" in row["message"] for row in rows.values())
    np.testing.assert_array_equal(labels(root, "scan00"), before)
    assert segment(*cases, "-o", root, "--model", other, "--force", "--progress", "none") == 0
    assert {row["model_sha256"] for row in read_table(root).values()} == {file_sha256(other)}
    capsys.readouterr()


def test_case_ids_never_collide(tmp_path):
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
    files = [tmp_path / "a" / "ct.nii.gz", tmp_path / "b" / "ct.nii.gz", tmp_path / "c" / "CT.nrrd", tmp_path / "a" / "cohort.csv.nii.gz"]
    cohort = find_cases([*files, files[0]], tmp_path / "out")  # the same file twice is one case
    assert [case.case_id for case in cohort.cases] == ["a_ct", "b_ct", "c_CT", "cohort.csv-2"]
    assert [case.input for case in cohort.cases] == files
    assert unique_ids(["ct", "ct", "CT", "ct-2", "../x y"], ["a", "a", "b", "c", "d"]) == ["a_ct", "a_ct-2", "b_CT", "ct-2", "x_y"]


@pytest.fixture(scope="module")
def dicom_tree(tmp_path_factory, test_data) -> Path:
    """patient/ct: the ts_dicom CT series; patient/topogram: 3 of its slices as a localiser; patient/mr: 3 as MR;
    mixed/: the CT series and that localiser in one folder."""
    tree = tmp_path_factory.mktemp("dicom") / "tree"
    source = test_data / "ts_dicom" / "dicom"
    shutil.copytree(source, tree / "patient" / "ct")
    shutil.copytree(source, tree / "mixed")
    for name, change in (("topogram", {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}), ("mr", {"Modality": "MR"})):
        uid = pydicom.uid.generate_uid()
        for folder in [tree / "patient" / name] + ([tree / "mixed"] if name == "topogram" else []):
            folder.mkdir(exist_ok=True)
            for index, file in enumerate(sorted(source.iterdir())[:3]):
                dataset = pydicom.dcmread(file)
                for keyword, value in change.items():
                    setattr(dataset, keyword, value)
                dataset.SeriesInstanceUID, dataset.SeriesNumber, dataset.SOPInstanceUID = uid, 9, pydicom.uid.generate_uid()
                dataset.save_as(folder / f"{name}{index}.dcm")
    (tree / "patient" / "notes.txt").write_text("not an image")
    return tree


def test_a_dicom_tree_gives_one_case_per_ct_series_and_lists_what_it_skips(tmp_path, dicom_tree, tiny_bundle_path, capsys):
    assert is_cohort([dicom_tree]) and not is_cohort([dicom_tree / "patient" / "ct"])
    root = tmp_path / "out"
    assert segment(dicom_tree, "-o", root, "--model", tiny_bundle_path, "--progress", "none") == 0
    printed = capsys.readouterr()
    rows = read_table(root)
    assert {case: (row["status"], row["input"]) for case, row in rows.items()} == {
        "mixed_20221208": ("done", str(dicom_tree / "mixed")),
        "mixed_20221208_s9": ("skipped", str(dicom_tree / "mixed")),
        "ct_20221208": ("done", str(dicom_tree / "patient" / "ct")),
        "mr_20221208_s9": ("skipped", str(dicom_tree / "patient" / "mr")),
        "topogram_20221208_s9": ("skipped", str(dicom_tree / "patient" / "topogram")),
    }
    assert rows["mr_20221208_s9"]["message"].startswith("not a CT series (Modality MR")
    assert rows["topogram_20221208_s9"]["message"].startswith("a localiser (ImageType LOCALIZER")
    assert rows["mixed_20221208_s9"]["message"].startswith("a localiser")
    for row in rows.values():
        if row["status"] == "skipped":
            assert f"note: skipped {row['input']}: {row['message']}." in printed.err
    np.testing.assert_array_equal(labels(root, "ct_20221208"), labels(root, "mixed_20221208"))  # the CT series, not the localiser


def test_txt_and_csv_lists_of_paths(tmp_path, scans, dicom_tree):
    listed = tmp_path / "lists"
    listed.mkdir()
    (listed / "cases.txt").write_text(f"# my cohort\n{scans / 'scan00.nii.gz'}\n\n../lists/local.nii.gz\n{dicom_tree / 'patient' / 'ct'}\n")
    shutil.copyfile(scans / "scan01.nii.gz", listed / "local.nii.gz")
    cohort = find_cases([listed / "cases.txt"], tmp_path / "out")
    assert [(case.case_id, case.input) for case in cohort.cases] == [
        ("scan00", scans / "scan00.nii.gz"), ("local", listed / "local.nii.gz"), ("ct_20221208", dicom_tree / "patient" / "ct")]

    (listed / "cases.csv").write_text(f"Case,Path,site\nfirst,{scans / 'scan00.nii.gz'}\n,local.nii.gz,B\nfirst,{scans / 'scan02.nii.gz'},C\n")
    cohort = find_cases([listed / "cases.csv"], tmp_path / "out")
    assert [(case.case_id, case.input) for case in cohort.cases] == [
        ("scans_first", scans / "scan00.nii.gz"), ("local", listed / "local.nii.gz"), ("scans_first-2", scans / "scan02.nii.gz")]

    (listed / "bad.csv").write_text("file\nscan.nii.gz\n")
    assert segment(listed / "bad.csv", "-o", tmp_path / "out") == 1
    assert not (tmp_path / "out").exists()


def test_two_workers_give_the_labels_of_one(tmp_path, real_scans, real_local, capsys):
    root = tmp_path / "out"
    assert segment(*real_scans, "-o", root, "--workers", "2", "--progress", "none") == 0
    local, parallel = read_table(real_local), read_table(root)
    assert list(parallel) == ["real0", "real1", "real2"]
    for case in parallel:
        np.testing.assert_array_equal(labels(root, case), labels(real_local, case))
        assert set(np.unique(labels(root, case))) == {0, 1, 2, 3, 4}  # the default model finds the four organs in every crop
        for column in COLUMNS[4:-4]:
            assert parallel[case][column] == local[case][column], column
    capsys.readouterr()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance in this process, two CPUs."""
    import ray  # the cluster extra is part of the test extra

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_the_same_cohort_on_ray_gives_the_same_labels(tmp_path, real_scans, real_local, local_ray, capsys):
    root = tmp_path / "out"
    assert segment(*real_scans, "-o", root, "--ray", "auto", "--workers", "2", "--progress", "none") == 0
    local, remote = read_table(real_local), read_table(root)
    assert list(remote) == list(local)
    for case in remote:
        np.testing.assert_array_equal(labels(root, case), labels(real_local, case))
        assert remote[case]["status"] == "done"
        for column in COLUMNS[4:-4]:
            assert remote[case][column] == local[case][column], column
    capsys.readouterr()


def kill_once(ancestor: int, name: str, stop: threading.Event) -> list[int]:
    """In a thread: SIGKILL the first descendant of process ``ancestor`` whose command line holds ``name``; the list
    returned gets its pid. The thread ends when ``stop`` is set."""
    killed: list[int] = []

    def watch() -> None:
        while not stop.is_set():
            try:
                descendants = psutil.Process(ancestor).children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for process in descendants:
                with contextlib.suppress(psutil.Error):
                    if name in " ".join(process.cmdline()):
                        process.kill()
                        killed.append(process.pid)
                        return
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    return killed


def test_a_ray_worker_that_dies_fails_its_case_and_the_next_run_finishes_it(tmp_path, ts_example_ct, tiny_bundle_path, local_ray, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for index in range(3):  # the whole sample: about 2 s a case with the tiny model
        write_image(crop(ts_example_ct, (slice(index, 122), slice(None), slice(None))), folder / f"full{index}.nii.gz")
    root = tmp_path / "out"
    stop = threading.Event()
    killed = kill_once(os.getpid(), "ray::CaseWorker.run", stop)  # an actor in the middle of a case
    try:
        code = segment(folder, "-o", root, "--model", tiny_bundle_path, "--ray", "auto", "--workers", "2", "--progress", "none")
    finally:
        stop.set()
    assert killed and code == 1
    rows = read_table(root)
    failed = [row for row in rows.values() if row["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["message"].startswith(f"the Ray worker segmenting {failed[0]['input']} died (")
    assert [row["status"] for row in rows.values()].count("done") == 2
    assert not (root / failed[0]["case"]).exists()
    assert last_line(capsys.readouterr().err) == f"abdoseg: error: 1 of 3 cases failed; each one's reason is in {root / 'cohort.csv'}."

    assert segment(folder, "-o", root, "--model", tiny_bundle_path, "--ray", "auto", "--progress", "none") == 0
    assert [row["status"] for row in read_table(root).values()].count("done") == 1
    assert sorted(path.name for path in root.iterdir()) == sorted([*rows, "cohort.csv", "cohort.json"])  # the dead actor's staging folder is gone
    capsys.readouterr()


def test_a_worker_process_killed_midway_costs_no_case(tmp_path, scans, tiny_bundle_path):
    """The cases a dead worker's pool held are run again, each alone: none is lost, none is left half-written."""
    root = tmp_path / "out"
    command = [sys.executable, "-m", "AbdoSegLib.cli", "segment", str(scans), "-o", str(root), "--model", str(tiny_bundle_path),
               "--workers", "2", "--progress", "none"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    killed = kill_once(child.pid, "from multiprocessing.spawn import spawn_main", stop)  # a worker process
    try:
        _, stderr = child.communicate(timeout=300)
    finally:
        stop.set()
    assert killed and child.returncode == 1, stderr
    rows = read_table(root)
    statuses = {case: row["status"] for case, row in rows.items()}
    assert statuses == {case: "failed" if case == BROKEN else "done" for case in rows}, [row["message"] for row in rows.values()]
    assert sorted(path.name for path in root.iterdir()) == sorted([case for case in rows if case != BROKEN] + ["cohort.csv", "cohort.json"])


def test_ray_actors_one_per_gpu_or_cpu_slot():
    """(actors, CPUs each, GPUs each) from the live nodes' (CPUs, GPUs)."""
    assert actor_plan([(64, 8)], "auto", None) == (8, 8.0, 1.0)  # a GPU each, with the CPUs that go with it
    assert actor_plan([(16, 1), (32, 2)], "auto", None) == (3, 16.0, 1.0)
    assert actor_plan([(16, 1)], "auto", 2) == (2, 8.0, 0.5)  # two actors share the GPU
    assert actor_plan([(16, 1)], "cpu", None) == (4, 4.0, 0.0)  # --device cpu: one per 4 CPUs
    assert actor_plan([(2, 0)], "auto", 2) == (2, 1.0, 0.0)
    assert actor_plan([(8, 0), (4, 0)], "auto", 2) == (2, 6.0, 0.0)
    assert actor_plan([(8, 0), (2, 0)], "auto", 1) == (1, 8.0, 0.0)  # no more than a node has


def test_ray_missing_is_one_sentence(tmp_path, scans, tiny_bundle_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert segment(scans, "-o", tmp_path / "out", "--model", tiny_bundle_path, "--ray", "auto") == 1
    assert capsys.readouterr().err.strip() == "abdoseg: error: --ray needs Ray, which is not installed here; install it with: pip install abdoseg[cluster]"
    assert not (tmp_path / "out").exists()


def test_a_table_not_written_by_abdoseg_is_not_replaced(tmp_path, scans, tiny_bundle_path, capsys):
    root = tmp_path / "out"
    root.mkdir()
    (root / "cohort.csv").write_text("my own notes\n")
    assert segment(scans, "-o", root, "--model", tiny_bundle_path) == 1
    assert "was not written by abdoseg segment" in capsys.readouterr().err
    assert (root / "cohort.csv").read_text() == "my own notes\n" and sorted(p.name for p in root.iterdir()) == ["cohort.csv"]


def test_ctrl_c_stops_the_workers_and_keeps_what_finished(tmp_path, ts_example_ct, tiny_bundle_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for index in range(8):  # the whole sample: about 2 s a case with the tiny model
        write_image(crop(ts_example_ct, (slice(index, 122), slice(None), slice(None))), folder / f"full{index}.nii.gz")
    root = tmp_path / "out"
    command = [sys.executable, "-m", "AbdoSegLib.cli", "segment", str(folder), "-o", str(root), "--model", str(tiny_bundle_path),
               "--workers", "2", "--progress", "json"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=interruptible)
    for line in child.stdout:  # Ctrl-C (to the whole process group, as a terminal sends it) after the first case is done
        if json.loads(line)["event"] == "done":
            os.killpg(child.pid, signal.SIGINT)
            break
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert last_line(stderr) == "abdoseg: interrupted; no output was left half-written."
    rows = read_table(root)
    assert 1 <= len(rows) < 8 and all(row["status"] == "done" for row in rows.values())
    assert sorted(path.name for path in root.iterdir()) == sorted([*rows, "cohort.csv", "cohort.json"])  # no staging folder, no lock
    assert json.loads(last_line(stdout))["event"] == "finished"


def test_a_ctrl_c_just_as_the_table_is_staged_leaves_no_staging_file(tmp_path, monkeypatch):
    real_open = os.open

    def open_then_interrupted(*args, **kwargs):  # the signal lands once the staging file exists
        os.close(real_open(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_table([], tmp_path)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    write_table([], tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask  # as a plain open() makes it
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cohort.csv", "cohort.json"]
    assert all((path.stat().st_mode & 0o777) == mode for path in tmp_path.iterdir())


def test_a_single_ct_keeps_its_output_folder(tmp_path, scans, tiny_bundle_path, capsys):
    out = tmp_path / "one"
    assert not is_cohort([scans / "scan00.nii.gz"])
    assert segment(scans / "scan00.nii.gz", "-o", out, "--model", tiny_bundle_path, "--workers", "2", "--progress", "none") == 0
    assert (out / LABELS_FILE).is_file() and not (out / "cohort.csv").exists()
    assert "--workers and --ray are for cohorts" in capsys.readouterr().err
