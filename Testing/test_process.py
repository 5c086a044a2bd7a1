"""The process protocol of the Slicer module (AbdoSegLib.process), with real child processes and no Qt.

The children are small Python scripts (``sys.executable -c``) that print what ``abdoseg segment
--progress json`` prints, misbehave the way a child can, or start children of their own; the
last test runs the real command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from AbdoSegLib import outputs
from AbdoSegLib.process import (
    STAGE_PROGRESS,
    SegmentationProcess,
    SegmentationResult,
    overall_percent,
    parse_progress_line,
    segment_command,
)
from AbdoSegLib.resources import SAMPLE_CT

BOUND_S = 60
"""Longest a test waits for a child to do something (a guard against hanging, not a timed assertion)."""


WITH_GRANDCHILD = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep({seconds})"])
print(grandchild.pid, flush=True)
time.sleep(60)
"""
"""A child that starts a grandchild sleeping ``seconds``, prints its pid and sleeps a minute."""


class Recorder:
    """Collects what the callbacks receive."""

    def __init__(self) -> None:
        self.progress: list[tuple[int | None, str, str]] = []
        self.log: list[str] = []
        self.results: list[SegmentationResult] = []

    def process(self, script: str, **kwargs) -> SegmentationProcess:
        """A started SegmentationProcess running ``script`` in this Python."""
        process = SegmentationProcess([sys.executable, "-c", script], on_progress=self.on_progress, on_log=self.log.append,
                                      on_finished=self.results.append, **kwargs)
        process.start()
        return process

    def on_progress(self, percent: int | None, stage: str, message: str) -> None:
        self.progress.append((percent, stage, message))


def poll_until(process: SegmentationProcess, condition: Callable[[], bool]) -> None:
    """Poll ``process`` (as Slicer's QTimer does) until ``condition()`` holds or BOUND_S passes."""
    deadline = time.monotonic() + BOUND_S
    while not condition() and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.01)
    assert condition()


def ended(process: psutil.Process) -> bool:
    """Gone, or a zombie (dead; only its exit status is left for a parent that may never collect it, as in containers)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_ended(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The processes that have not ended within BOUND_S."""
    deadline = time.monotonic() + BOUND_S
    while not all(ended(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in processes if not ended(p)]


# Progress lines ---------------------------------------------------------------------------------


def test_the_stage_table_covers_every_stage_in_order_from_0_to_100_percent():
    assert list(STAGE_PROGRESS) == list(outputs.STAGES)
    spans = list(STAGE_PROGRESS.values())
    assert spans[0][0] == 0 and spans[-1] == (100, 100)
    assert all(start <= end for start, end in spans)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))  # no gap, no overlap


def test_progress_lines_are_parsed_and_mapped_to_percent_of_the_whole_run():
    line = json.dumps({"stage": "inference", "fraction": 0.5, "message": "window 5 of 10"})
    assert parse_progress_line(line) == {"stage": "inference", "fraction": 0.5, "message": "window 5 of 10"}
    for other in ("reading", "{not json", '{"stage": "read"}', "[1, 2]", '"text"', ""):
        assert parse_progress_line(other) is None, other
    start, end = STAGE_PROGRESS["inference"]
    assert overall_percent("inference", 0.0) == start and overall_percent("inference", 1.0) == end
    assert overall_percent("inference", 0.5) == round((start + end) / 2)
    assert overall_percent("inference", 7.0) == end and overall_percent("inference", -1.0) == start  # clipped
    assert overall_percent("done", 1.0) == 100
    assert overall_percent("no such stage", 0.5) is None


def test_progress_lines_go_to_the_progress_callback_and_every_other_line_to_the_log():
    recorder = Recorder()
    script = """
import json, sys
print("abdoseg 0.1.0 starting")
print(json.dumps({"stage": "read", "fraction": 0.0, "message": "reading ct.nii.gz"}))
print("a warning on stderr", file=sys.stderr, flush=True)
print(json.dumps({"stage": "inference", "fraction": 1.0, "message": "window 4 of 4"}))
print(json.dumps({"stage": "later", "fraction": 0.5, "message": "a stage the table does not know"}))
print('{"not": "progress"}')
"""
    process = recorder.process(script)
    result = process.wait(BOUND_S)
    assert recorder.progress == [
        (STAGE_PROGRESS["read"][0], "read", "reading ct.nii.gz"),
        (STAGE_PROGRESS["inference"][1], "inference", "window 4 of 4"),
        (None, "later", "a stage the table does not know"),
    ]
    assert recorder.log == process.log_lines == ["abdoseg 0.1.0 starting", "a warning on stderr", '{"not": "progress"}']
    assert recorder.results == [result] and result.status == "completed" and result.log == recorder.log
    assert process.return_code == 0 and process.finished and not process.running


def test_non_ascii_and_invalid_utf8_output_arrives_with_the_bad_bytes_replaced():
    recorder = Recorder()
    script = r"""
import json, sys
print("Leber — 1.2 L, µ = 60 HU")  # encoded by the child as PYTHONIOENCODING says
sys.stdout.flush()
sys.stdout.buffer.write(b"bad \xff\xfe bytes\n" + "Niere \u00e9".encode("utf-8") + b"\n")
sys.stdout.buffer.flush()
print(json.dumps({"stage": "write", "fraction": 0.0, "message": "écrit /données"}, ensure_ascii=False))
"""
    process = recorder.process(script)
    assert process.wait(BOUND_S).status == "completed"
    assert recorder.log == ["Leber — 1.2 L, µ = 60 HU", "bad \ufffd\ufffd bytes", "Niere é"]
    assert recorder.progress == [(STAGE_PROGRESS["write"][0], "write", "écrit /données")]


# The end of a run -------------------------------------------------------------------------------


def test_a_failed_command_reports_its_own_error_sentence_else_its_last_line_else_its_exit_code():
    recorder = Recorder()
    script = 'import sys; print("loading"); print("abdoseg: error: the CT could not be read.", file=sys.stderr); sys.exit(1)'
    result = recorder.process(script).wait(BOUND_S)
    assert (result.status, result.message) == ("failed", "the CT could not be read.")
    assert recorder.process('print("Traceback: something broke"); raise SystemExit(2)').wait(BOUND_S).message == "Traceback: something broke"
    assert recorder.process("raise SystemExit(3)").wait(BOUND_S).message == "the segmentation process ended with code 3."
    assert [r.status for r in recorder.results] == ["failed"] * 3


def test_a_command_that_cannot_start_is_finished_and_failed_not_running():
    recorder = Recorder()
    process = SegmentationProcess(["/nonexistent/PythonSlicer", "-m", "AbdoSegLib.cli"], on_finished=recorder.results.append)
    process.start()
    assert process.finished and not process.running and process.proc is None
    assert len(recorder.results) == 1 and recorder.results[0] is process.result
    assert process.result.status == "failed"
    assert process.result.message.startswith("/nonexistent/PythonSlicer could not be started: ")
    process.cancel()  # nothing to stop
    assert process.wait(BOUND_S) is process.result and len(recorder.results) == 1


def test_a_child_that_closes_its_output_and_keeps_running_ends_the_reader_not_the_run():
    recorder = Recorder()
    script = 'import os, time; print("bye", flush=True); os.close(1); os.close(2); time.sleep(60)'
    process = recorder.process(script)
    process.reader.join(BOUND_S)
    assert not process.reader.is_alive()
    process.poll()
    assert recorder.log == ["bye"] and process.running and process.proc.poll() is None
    process.cancel()
    assert process.wait(BOUND_S).status == "cancelled"


def test_a_child_that_closes_its_output_and_exits_finishes_the_run():
    recorder = Recorder()
    process = recorder.process('import os; print("abdoseg: error: no model.", flush=True); os.close(1); os.close(2); os._exit(4)')
    process.reader.join(BOUND_S)
    assert not process.reader.is_alive()
    result = process.wait(BOUND_S)
    assert (result.status, result.message, process.return_code) == ("failed", "no model.", 4)


def test_the_reader_ends_when_its_end_of_the_pipe_is_closed():
    recorder = Recorder()
    script = "import os, time\nwhile True:\n    try:\n        os.write(1, b'tick\\n')\n    except OSError:\n        pass\n    time.sleep(0.01)"
    process = recorder.process(script)
    poll_until(process, lambda: "tick" in recorder.log)
    process.proc.stdout.close()  # the reader thread's next read fails: it must end, not spin
    process.reader.join(BOUND_S)
    assert not process.reader.is_alive()
    process.cancel()
    assert process.wait(BOUND_S).status == "cancelled"


# Cancel -----------------------------------------------------------------------------------------


def test_cancel_kills_the_whole_tree_without_waiting_for_it(monkeypatch):
    recorder = Recorder()
    process = recorder.process(WITH_GRANDCHILD.format(seconds=60))
    poll_until(process, lambda: bool(recorder.log))
    tree = [psutil.Process(process.proc.pid), psutil.Process(int(recorder.log[0]))]
    assert tree[1].ppid() == tree[0].pid and not any(ended(p) for p in tree)

    def no_waiting(*args, **kwargs):
        raise AssertionError("cancel() waited for a process")

    with monkeypatch.context() as patch:
        for owner, name in ((psutil, "wait_procs"), (psutil.Process, "wait"), (subprocess.Popen, "wait"), (subprocess.Popen, "communicate")):
            patch.setattr(owner, name, no_waiting)
        process.cancel()
    assert process.cancelled and process.running and not recorder.results  # the end is reported by a later poll()
    result = process.wait(BOUND_S)
    assert result.status == "cancelled" and recorder.results == [result] and result.log == recorder.log
    assert wait_ended(tree) == []


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX; Windows relies on the listing of children")
def test_cancel_kills_a_grandchild_started_too_late_to_be_listed(monkeypatch):
    """The launcher may start Python between the listing of its children and the kill: the group kill still reaches it."""
    recorder = Recorder()
    process = recorder.process(WITH_GRANDCHILD.format(seconds=3600))  # it ends in time only if killed
    poll_until(process, lambda: bool(recorder.log))
    grandchild = psutil.Process(int(recorder.log[0]))
    monkeypatch.setattr(psutil.Process, "children", lambda self, recursive=False: [])  # as if it had not been started yet
    try:
        process.cancel()
        assert wait_ended([grandchild]) == []
        poll_until(process, lambda: process.finished)
        assert process.result.status == "cancelled"
    finally:
        if not ended(grandchild):
            grandchild.kill()


def test_cancel_after_the_child_exited_normally_reports_completed():
    recorder = Recorder()
    process = recorder.process('print("all written")')
    process.proc.wait()  # the command has finished; nobody has polled yet
    process.cancel()
    assert not process.cancelled
    assert process.wait(BOUND_S).status == "completed" and recorder.log == ["all written"]


# The real command line --------------------------------------------------------------------------


def test_the_segment_command_speaks_the_protocol_and_skips_the_seg_nrrd(tmp_path, tiny_bundle_path):
    recorder = Recorder()
    output = tmp_path / "out"
    command = segment_command(sys.executable, SAMPLE_CT, output, tiny_bundle_path, "cpu")
    process = SegmentationProcess(command, env=dict(os.environ, OMP_NUM_THREADS="2"), on_progress=recorder.on_progress,
                                  on_log=recorder.log.append, on_finished=recorder.results.append)
    process.start()
    result = process.wait(300)
    assert result.status == "completed", process.log_lines
    stages = [stage for _, stage, _ in recorder.progress]
    assert set(stages) <= set(STAGE_PROGRESS), f"stages missing in STAGE_PROGRESS: {set(stages) - set(STAGE_PROGRESS)}"
    assert set(stages) == set(outputs.STAGES) - {outputs.SURFACES, outputs.PICTURE}  # those two only when asked for
    percents = [percent for percent, _, _ in recorder.progress]
    assert percents == sorted(percents) and percents[-1] == 100  # the bar never goes back
    assert sorted(p.name for p in output.iterdir()) == sorted([outputs.LABELS_FILE, outputs.SUMMARY_FILE])
    assert isinstance(json.loads((output / outputs.SUMMARY_FILE).read_text())["qa"]["warnings"], list)  # what the module shows


def test_segment_command_passes_the_device_and_asks_for_json_progress():
    command = segment_command("PythonSlicer", "in.nrrd", "out", "model.safetensors", "cuda")
    assert command[:4] == ["PythonSlicer", "-m", "AbdoSegLib.cli", "segment"]
    assert command[command.index("--device") + 1] == "cuda" and command[command.index("--progress") + 1] == "json"
    assert "--no-seg-nrrd" in command
