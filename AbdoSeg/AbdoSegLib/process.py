"""``abdoseg segment`` in a child process, followed through its ``--progress json`` lines (the Slicer module's protocol).

A thread reads the child's output (UTF-8) into a queue; whoever drives the process calls ``poll()``
(in Slicer a QTimer on the GUI thread, in scripts and tests a loop) and gets progress, log lines and
the end through callbacks on its own thread. ``cancel()`` stops the whole process tree without waiting.

Standard library and psutil only: Slicer's GUI process imports it, where torch may be absent.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .outputs import DONE, INFERENCE, PICTURE, POSTPROCESS, PREPROCESS, READ, SURFACES, WRITE

STAGE_PROGRESS = {
    READ: (0, 5),
    PREPROCESS: (5, 10),
    INFERENCE: (10, 85),
    POSTPROCESS: (85, 93),
    WRITE: (93, 97),
    SURFACES: (97, 99),
    PICTURE: (99, 100),
    DONE: (100, 100),
}
"""Stage -> (start, end), the percent of the whole run that each stage of ``abdoseg segment`` fills on a progress bar."""

ERROR_PREFIX = "abdoseg: error:"
LOG_LINES_KEPT = 200


@dataclass
class SegmentationResult:
    """What became of one run.

    status: "completed", "failed" or "cancelled"; message: one sentence for the user;
    summary: the run's summary.json and warnings its QA warnings (when completed and read);
    log: the last output lines that were not progress; segmentation_node: where the Slicer module put the result.
    """

    status: str
    message: str = ""
    summary: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    segmentation_node: object = None


def parse_progress_line(line: str) -> dict | None:
    """The {"stage", "fraction", "message"} object of a JSON progress line, or None for any other line."""
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if isinstance(value, dict) and "stage" in value and "fraction" in value:
        return value
    return None


def overall_percent(stage: str, fraction: float) -> int | None:
    """Progress bar value (0-100) for a stage's fraction (0..1, clipped); None for a stage not in STAGE_PROGRESS."""
    if stage not in STAGE_PROGRESS:
        return None
    start, end = STAGE_PROGRESS[stage]
    return round(start + (end - start) * min(max(float(fraction), 0.0), 1.0))


def segment_command(python: str, ct: str | Path, output: str | Path, model: str | Path, device: str = "auto") -> list[str]:
    """The ``abdoseg segment`` command line for ``python`` (Slicer: PythonSlicer), with JSON progress and without
    the .seg.nrrd file (the Slicer module builds its segmentation node from the labels)."""
    return [python, "-m", "AbdoSegLib.cli", "segment", str(ct), "-o", str(output), "--model", str(model),
            "--device", device, "--progress", "json", "--no-seg-nrrd"]


def kill_process_tree(pid: int) -> None:
    """Kill a process and every process it started, without waiting for them to end.

    (PythonSlicer is a launcher: killing it alone would leave Python running.) On POSIX the
    child leads its own process group (``SegmentationProcess.start``) and the whole group is
    killed at once, so a process the launcher starts at that moment cannot slip out between
    listing the children and killing them; the listing below then catches any that left the group.
    """
    if os.name == "posix":
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        parent = psutil.Process(pid)
        processes = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


class SegmentationProcess:
    """One child process whose output follows the ``--progress json`` protocol.

    Callbacks, all called from ``poll()`` on the caller's thread:
      on_progress(percent: int | None, stage: str, message: str) for each progress line
        (percent of the whole run, None for a stage not in STAGE_PROGRESS);
      on_log(line: str) for every other output line (stdout and stderr together, trailing whitespace removed);
      on_finished(result: SegmentationResult) once, when the process has ended (or could not start):
        "completed" for exit code 0, "cancelled" after ``cancel()``, else "failed" with the command's own sentence.
    """

    def __init__(
        self,
        command: list[str],
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        on_progress: Callable[[int | None, str, str], None] | None = None,
        on_log: Callable[[str], None] | None = None,
        on_finished: Callable[[SegmentationResult], None] | None = None,
    ):
        """``env``: the child's environment (default: this process's), to which unbuffered UTF-8 output is added."""
        self.command = [str(part) for part in command]
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        self.on_progress = on_progress
        self.on_log = on_log
        self.on_finished = on_finished
        self.proc: subprocess.Popen | None = None
        self.reader: threading.Thread | None = None
        self.return_code: int | None = None
        self.cancelled = False
        self.finished = False
        self.result: SegmentationResult | None = None
        self.log_lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._output_ended = False

    @property
    def running(self) -> bool:
        """Started, and its end not yet handed over by ``poll()``."""
        return self.proc is not None and not self.finished

    def start(self) -> None:
        """Start the child and its output reader; a child that cannot start finishes at once as "failed"."""
        try:
            self.proc = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # Windows: no console window flashes up
                start_new_session=os.name == "posix",  # its own process group, killed as one (kill_process_tree)
            )
        except OSError as error:
            self._finish(SegmentationResult("failed", f"{self.command[0]} could not be started: {error.strerror or error}."))
            return
        self.reader = threading.Thread(target=self._read_output, name="AbdoSeg output reader", daemon=True)
        self.reader.start()

    def _read_output(self) -> None:
        """Reader thread: each output line (UTF-8, undecodable bytes replaced) into the queue, then None at its end."""
        try:
            for raw in self.proc.stdout:
                self._queue.put(raw.decode("utf-8", errors="replace").rstrip())
        except (OSError, ValueError):  # the pipe broke or was closed: the output has ended
            pass
        finally:
            self._queue.put(None)
            self.proc.stdout.close()

    def poll(self) -> None:
        """Hand the lines read so far to the callbacks; finish once the output has ended and the process has exited."""
        while not self.finished:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._output_ended = True
            elif (progress := parse_progress_line(line)) is not None:
                if self.on_progress:
                    stage = str(progress["stage"])
                    self.on_progress(overall_percent(stage, progress["fraction"]), stage, str(progress.get("message", "")))
            else:
                self.log_lines = (self.log_lines + [line])[-LOG_LINES_KEPT:]
                if self.on_log:
                    self.on_log(line)
        if self.running and self._output_ended and self.proc.poll() is not None:
            self.return_code = self.proc.returncode
            self._finish(self._outcome())

    def _outcome(self) -> SegmentationResult:
        if self.return_code == 0:
            return SegmentationResult("completed", log=self.log_lines)
        if self.cancelled:
            return SegmentationResult("cancelled", "Cancelled.", log=self.log_lines)
        return SegmentationResult("failed", self.error_message(), log=self.log_lines)

    def _finish(self, result: SegmentationResult) -> None:
        self.result = result
        self.finished = True
        if self.on_finished:
            self.on_finished(result)

    def error_message(self) -> str:
        """The command's own one-sentence error ("abdoseg: error: ..."), else its last output line, else its exit code."""
        for line in reversed(self.log_lines):
            if line.startswith(ERROR_PREFIX):
                return line[len(ERROR_PREFIX):].strip()
        return self.log_lines[-1] if self.log_lines else f"the segmentation process ended with code {self.return_code}."

    def cancel(self) -> None:
        """Kill the process tree and return at once; ``poll()`` reports "cancelled" when the end is seen.

        A process that has already exited is left as it is (exit code 0 stays "completed").
        """
        if not self.running or self.proc.poll() is not None:
            return
        self.cancelled = True
        kill_process_tree(self.proc.pid)

    def wait(self, timeout_s: float | None = None, idle: Callable[[], None] | None = None, interval_s: float = 0.02) -> SegmentationResult:
        """Poll until finished (scripts, tests) and return the result; cancel after ``timeout_s`` seconds.

        ``idle()`` runs between polls (Slicer: processing the application's events).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.poll()
            if self.finished:
                return self.result
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            if idle:
                idle()
            time.sleep(interval_s)
