"""Outputs that cannot destroy anything: ``--force`` replaces only AbdoSeg's own folder, one run per output
folder at a time, nothing hidden left by a killed run, training files kept unless asked."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from abdoseg_train.cli import main as train_main
from AbdoSegLib.cli import main
from AbdoSegLib.outputs import LABELS_FILE, SUMMARY_FILE
from AbdoSegLib.resources import SAMPLE_CT, SAMPLE_REFERENCE
from test_training import _tiny_case


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too), by relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_refused(code: int, capsys, program: str, *phrases: str) -> None:
    """Exit code 1 and one sentence on stderr naming the problem."""
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("case", ["holds_the_input", "parent_of_the_input", "current_folder", "other_files", "no_summary"])
def test_force_replaces_only_a_folder_segment_wrote(tmp_path, tiny_bundle_path, monkeypatch, capsys, case):
    ct = tmp_path / "case" / ("sub" if case == "parent_of_the_input" else "") / "ct.nii.gz"
    ct.parent.mkdir(parents=True)
    shutil.copy(SAMPLE_CT, ct)
    out, phrase = tmp_path / "case", "holds the input"
    if case == "current_folder":
        monkeypatch.chdir(tmp_path / "case")
        ct, out, phrase = Path("ct.nii.gz"), Path("."), "is the current folder"
    elif case in ("other_files", "no_summary"):
        out = tmp_path / "out"
        out.mkdir()
        (out / LABELS_FILE).write_bytes(b"the user's own labels")
        if case == "other_files":
            (out / SUMMARY_FILE).write_text(json.dumps({"abdoseg_version": "0.1"}))
            (out / "notes.txt").write_text("keep me")
        phrase = "holds files that abdoseg segment does not write (notes.txt)" if case == "other_files" else "has no summary.json"
    before = snapshot(tmp_path)
    code = main(["segment", str(ct), "-o", str(out), "--model", str(tiny_bundle_path), "--force", "--progress", "none"])
    assert_refused(code, capsys, "abdoseg", f"{out} {phrase}", "choose another output folder")
    assert snapshot(tmp_path) == before
    assert sorted(path.name for path in tmp_path.rglob(".*")) == []


def test_a_second_run_on_a_folder_being_written_is_refused(tmp_path, tiny_bundle_path, capsys):
    lock, out = tmp_path / ".out.lock", tmp_path / "out"
    lock.write_text(f"{os.getpid()}\n")  # a run that is alive: this one
    code = main(["segment", str(SAMPLE_CT), "-o", str(out), "--model", str(tiny_bundle_path), "--progress", "none"])
    assert_refused(code, capsys, "abdoseg", f"{out} is being written by another AbdoSeg run", f"process {os.getpid()}")
    assert snapshot(tmp_path) == {".out.lock": f"{os.getpid()}\n".encode()}


def test_a_killed_runs_lock_and_partial_folder_are_cleaned_by_the_next_run(tmp_path, tiny_bundle_path, capsys):
    pid, out = dead_pid(), tmp_path / "out"
    (tmp_path / ".out.lock").write_text(f"{pid}\n")
    partial = tmp_path / f".out.partial-{pid}-x1y2"
    partial.mkdir()
    (partial / LABELS_FILE).write_bytes(b"half")
    (tmp_path / ".notes.partial-1-x").mkdir()  # not AbdoSeg's staging folder for this output: left alone
    assert main(["segment", str(SAMPLE_CT), "-o", str(out), "--model", str(tiny_bundle_path), "--progress", "none"]) == 0
    err = capsys.readouterr().err
    assert "taking it over" in err and f"removed {partial}" in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == [".notes.partial-1-x", "out"]


def test_sigterm_leaves_no_partial_folder(tmp_path, tiny_bundle_path):
    """The run is held at its first progress line (its stdout is a full pipe), once its staging folder exists."""
    out = tmp_path / "out"
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(writer, b"x" * 4096)
    os.set_blocking(writer, True)
    child = subprocess.Popen([sys.executable, "-m", "AbdoSegLib.cli", "segment", str(SAMPLE_CT), "-o", str(out),
                              "--model", str(tiny_bundle_path), "--progress", "json"],
                             stdout=writer, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    os.close(writer)
    for _poll in range(60000):  # until the staging folder exists (at most about 10 minutes)
        if list(tmp_path.glob(".out.partial-*")) or child.poll() is not None:
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    with os.fdopen(reader, "rb") as stdout:
        stdout.read()  # lets the run finish its last line, then end
    err = child.stderr.read()
    assert child.wait(timeout=120) != 0, err
    assert "Traceback" not in err and "interrupted" in err, err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_keeps_an_existing_json_unless_forced(tmp_path, tiny_bundle_path, capsys):
    case = _tiny_case(tmp_path / "cases", "case", (slice(10, 90), slice(10, 90), slice(40, 90)), ["liver"])
    report = tmp_path / "eval.json"
    report.write_text("the user's results\n")
    before = snapshot(tmp_path)
    assert_refused(train_main(["evaluate", str(tiny_bundle_path), str(case), "--json", str(report), "--device", "cpu"]), capsys,
                   "abdoseg-train", f"{report} already exists", "--force")
    assert snapshot(tmp_path) == before
    assert train_main(["evaluate", str(tiny_bundle_path), str(case), "--json", str(report), "--device", "cpu", "--force"]) == 0
    assert "case" in json.dumps(json.loads(report.read_text()))


def test_training_outputs_never_replace_an_input_even_with_force(tmp_path, tiny_bundle_path, capsys):
    case = _tiny_case(tmp_path / "cases", "case", (slice(10, 90), slice(10, 90), slice(40, 90)), ["liver"])
    model = tmp_path / "model.safetensors"
    model.write_bytes(tiny_bundle_path.read_bytes())
    before = snapshot(tmp_path)
    assert_refused(train_main(["evaluate", str(model), str(case), "--json", str(model), "--force", "--device", "cpu"]), capsys,
                   "abdoseg-train", f"{model} is the input {model}", "elsewhere")
    assert_refused(train_main(["evaluate", str(model), str(case), "--json", str(case / "ct.nii.gz"), "--force"]), capsys,
                   "abdoseg-train", "is the input", "inside it")
    assert_refused(train_main(["export", str(model), "-o", str(model), "--force"]), capsys, "abdoseg-train", "is the input", "elsewhere")
    assert_refused(train_main(["fit", "--train", str(tmp_path / "cases"), "-o", str(tmp_path / "cases"), "--force"]), capsys,
                   "abdoseg-train", "is the input", "elsewhere")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("resume", [None, "other"])
def test_fit_keeps_another_runs_checkpoint_and_log(tmp_path, capsys, resume):
    case = _tiny_case(tmp_path / "cases", "case", (slice(10, 90), slice(10, 90), slice(40, 90)), ["liver"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"the previous run's checkpoint")
    (run / "log.csv").write_text("epoch,loss\n1,0.5\n")
    before = snapshot(tmp_path)
    args = ["fit", "--train", str(case), "-o", str(tmp_path / "model.safetensors"), "--workdir", str(run)]
    code = train_main(args + (["--resume", str(tmp_path / "other" / "checkpoint.pt")] if resume else []))
    assert_refused(code, capsys, "abdoseg-train", f"{run} already holds a run (checkpoint.pt, log.csv)",
                   f"--resume {run / 'checkpoint.pt'}", "another --workdir")
    assert snapshot(tmp_path) == before


HELD = """
import importlib, signal, sys
module_name, name, program = sys.argv[1:4]
module = importlib.import_module(module_name)
real = getattr(module, name)

def held(*args, **kwargs):
    result = real(*args, **kwargs)
    print("held", flush=True)
    signal.pause()
    return result

setattr(module, name, held)
sys.exit(importlib.import_module(program).main(sys.argv[4:]))
"""
"""A command line run held (paused) right after ``module.name`` returns: ``python -c HELD module name cli_module ARGS...``."""


def terminate_when_held(module: str, name: str, program: str, *argv: str) -> tuple[int, str]:
    """Run ``program``'s main with ``argv`` in a child, SIGTERM it once held after ``module.name``; (exit code, stderr)."""
    child = subprocess.Popen([sys.executable, "-c", HELD, module, name, program, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    held = child.stdout.readline()  # blocks until the child is held, or ends
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert held == "held\n", err
    return child.returncode, err


def test_export_sigterm_keeps_the_previous_folder_and_leaves_nothing(tmp_path, capsys):
    """Held once the new surfaces are staged; the previous export stays as it was, and --force then replaces it."""
    out = tmp_path / "surfaces"
    assert main(["export", str(SAMPLE_REFERENCE), "-o", str(out)]) == 0
    before = snapshot(tmp_path)
    code, err = terminate_when_held("AbdoSegLib.surfaces.meshes", "export_surfaces", "AbdoSegLib.cli",
                                    "export", str(SAMPLE_REFERENCE), "-o", str(out), "--force", "--format", "obj")
    assert code == 130 and err == "abdoseg: interrupted; no output was left half-written.\n", err
    assert snapshot(tmp_path) == before
    assert main(["export", str(SAMPLE_REFERENCE), "-o", str(out), "--force", "--format", "obj"]) == 0
    assert sorted(path.suffix for path in out.iterdir()) == [".mtl"] * 4 + [".obj"] * 4
    assert [path.name for path in tmp_path.iterdir()] == ["surfaces"]


@pytest.mark.parametrize("case", ["holds_the_input", "other_files", "empty"])
def test_export_force_replaces_only_a_folder_export_wrote(tmp_path, capsys, case):
    out, labels = tmp_path / "surfaces", SAMPLE_REFERENCE
    out.mkdir()
    if case == "holds_the_input":
        labels = out / "labels.nii.gz"
        shutil.copy(SAMPLE_REFERENCE, labels)
        phrase = f"holds the input {labels}"
    elif case == "other_files":
        (out / "liver_LPS.stl").write_bytes(b"the user's own liver")
        (out / "notes.txt").write_text("keep me")
        phrase = "holds files that abdoseg export does not write (notes.txt)"
    else:
        phrase = "is empty"
    before = snapshot(tmp_path)
    code = main(["export", str(labels), "-o", str(out), "--force"])
    assert_refused(code, capsys, "abdoseg", f"{out} {phrase}", "choose another output folder")
    assert snapshot(tmp_path) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["surfaces"]


ANATOMY = Path(__file__).resolve().parent / "Data" / "anatomy_totalseg" / "s0000_anatomy.nii.gz"


def test_synth_sigterm_keeps_the_previous_case_and_leaves_nothing(tmp_path):
    """Held once the new CT is staged; the previous case folder stays byte-identical."""
    synth = ["synth", str(ANATOMY), "-o", str(tmp_path), "--phase", "arterial"]
    assert train_main(synth) == 0
    before = snapshot(tmp_path)
    code, err = terminate_when_held("abdoseg_train.synthetic_cases", "write_image", "abdoseg_train.cli", *synth, "--seed", "1", "--force")
    assert code == 130 and err == "abdoseg-train: interrupted; no output was left half-written.\n", err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["holds_the_input", "other_files", "real_case"])
def test_synth_force_replaces_only_a_case_synth_wrote(tmp_path, capsys, case):
    folder, anatomy = tmp_path / "s0000_synthetic_1", ANATOMY
    folder.mkdir()
    if case == "holds_the_input":
        anatomy = folder / ANATOMY.name
        for source in (ANATOMY, ANATOMY.with_name("s0000_anatomy.json")):
            shutil.copy(source, folder)
        phrase = f"holds the input {anatomy}"
    elif case == "other_files":
        (folder / "case.json").write_text(json.dumps({"synthetic": {"anatomy": "s0000"}}))
        (folder / "notes.txt").write_text("keep me")
        phrase = "holds files that abdoseg-train synth does not write (notes.txt)"
    else:
        (folder / "ct.nii.gz").write_bytes(b"a real CT")
        (folder / "case.json").write_text(json.dumps({"labelled": ["liver"]}))
        phrase = "has no case.json written by abdoseg-train synth"
    before = snapshot(tmp_path)
    code = train_main(["synth", str(anatomy), "-o", str(tmp_path), "--force"])
    assert_refused(code, capsys, "abdoseg-train", f"{folder} {phrase}", "choose another output folder")
    assert snapshot(tmp_path) == before
