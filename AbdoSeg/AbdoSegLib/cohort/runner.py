"""Run a cohort: skip what an earlier run finished, segment the rest, keep ``cohort.csv`` up to date.

The cases run in this process (one worker), in ``workers`` processes on this machine (each loads the model once,
gets ``cores // workers`` CPU threads and, where there are several GPUs, a GPU of its own), or on a Ray cluster
(``ray_runner``). Every worker segments with ``work.CaseWorker``. A failed case is a row and the run goes on; a
worker process that dies fails the case it held. Ctrl-C (or SIGTERM) stops the workers: each removes its
unfinished case folder, and the table keeps the cases that finished.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

from ..errors import AbdoSegError
from ..io.atomic import sigterm_as_interrupt
from ..model.bundle import ModelBundle
from ..run_case import CaseOptions
from .events import CohortEvents
from .inputs import Case, Cohort, find_cases
from .table import CSV_FILE, FAILED, SKIPPED, Row, check_table_files, counts, summary_row, write_table
from .work import CaseWorker, Finished, Recovered, Started, failed_row, previous_result, summary_stamp, written_anyway

TABLE_INTERVAL_S = 2.0
"""The table is rewritten at most this often while cases finish (and always at the end)."""
GRACE_S = 5.0
"""After Ctrl-C, how long the workers get to remove their unfinished folders before they are stopped."""


def segment_cohort(inputs: list[Path], root: Path, bundle: ModelBundle, options: CaseOptions, workers: int | None = None,
                   ray_address: str | None = None, progress: str = "auto") -> dict[str, int]:
    """``abdoseg segment`` on a cohort: find the cases, run them, write the table; returns the counts per status.

    Raises AbdoSegError saying how many cases failed when any did (after the table is written).
    """
    root = Path(os.path.abspath(root))
    cohort = find_cases(inputs, root)
    mode = progress if progress != "auto" else ("bar" if sys.stderr.isatty() else "none")
    found = run_cohort(cohort, root, bundle, options, workers, ray_address, mode)
    if found[FAILED]:
        total = len(cohort.cases)
        raise AbdoSegError(f"{found[FAILED]} of {total} case{'s' if total != 1 else ''} failed; each one's reason is in {root / CSV_FILE}.")
    return found


def run_cohort(cohort: Cohort, root: Path, bundle: ModelBundle, options: CaseOptions, workers: int | None = None,
               ray_address: str | None = None, mode: str = "none") -> dict[str, int]:
    """Segment ``cohort`` into ``root/<case id>/`` (``mode``: bar, json or none); returns the counts per status.

    ``workers``: processes on this machine (None: one, this process), or Ray actors (None: one per GPU or CPU slot).
    """
    if ray_address is not None:
        from .ray_runner import ray_session  # Ray is an extra: imported only when asked for

        with ray_session(ray_address):
            return _run(cohort, root, bundle, options, workers, True, mode)
    return _run(cohort, root, bundle, options, workers, False, mode)


def _run(cohort: Cohort, root: Path, bundle: ModelBundle, options: CaseOptions, workers: int | None, on_ray: bool, mode: str) -> dict[str, int]:
    """``run_cohort`` once connected to Ray (``on_ray``) or without it."""
    if root.exists() and not root.is_dir():
        raise AbdoSegError(f"{root} exists and is not a folder; a cohort's output is a folder of case folders.")
    root.mkdir(parents=True, exist_ok=True)
    check_table_files(root)
    order = {case.case_id: index for index, case in enumerate(cohort.cases)}
    rows: dict[str, Row] = {}
    to_run, ready = plan(cohort.cases, root, bundle, options)
    events = CohortEvents(mode, len(cohort.cases), len(to_run))
    if cohort.unlisted_images:
        events.note(f"{cohort.unlisted_images} image file(s) in subfolders were not taken: only image files directly in a "
                    f"folder given are cases (give others as arguments or in a list).")
    last_write = time.monotonic()

    def finish(row: Row, ran: bool = True) -> None:
        nonlocal last_write
        rows[row.case] = row
        events.finished(row, ran)
        if time.monotonic() - last_write >= TABLE_INTERVAL_S:
            write_table(sorted(rows.values(), key=lambda r: order[r.case]), root)
            last_write = time.monotonic()

    for case in cohort.cases:
        if case.skipped is not None:
            events.note(f"skipped {case.input}: {case.skipped}.")
    for row in ready:
        finish(row, ran=False)
    running: dict[str, Case] = {}
    stamps = {case.case_id: summary_stamp(root / case.case_id) for case in to_run}

    def recovered(case: Case) -> Row | None:
        return written_anyway(case, root, bundle, options, stamps[case.case_id])

    def start(case: Case) -> None:
        running[case.case_id] = case
        events.started(case)

    try:
        if on_ray:
            from .ray_runner import run_on_ray

            run_on_ray(to_run, root, bundle, options, workers, start, finish, recovered)
        elif (workers or 1) > 1 and len(to_run) > 1:
            run_in_processes(to_run, root, bundle, options, min(workers, len(to_run)), start, finish, recovered)
        else:
            worker = CaseWorker(bundle, options)
            for case in to_run:
                start(case)
                finish(worker.run(case, root))
    finally:
        for case in running.values():  # stopped (Ctrl-C) after its folder was in place: it is done
            if case.case_id not in rows and (row := recovered(case)) is not None:
                finish(row)
        write_table(sorted(rows.values(), key=lambda r: order[r.case]), root)
        events.close(root / CSV_FILE)
    return counts(list(rows.values()))


def plan(cases: list[Case], root: Path, bundle: ModelBundle, options: CaseOptions) -> tuple[list[Case], list[Row]]:
    """(cases to segment, rows known now): series skipped at discovery, cases an earlier run finished with this
    model (unless ``options.force``), and cases whose folder holds another result (failed, unless ``options.force``)."""
    to_run, ready = [], []
    for case in cases:
        if case.skipped is not None:
            ready.append(Row(case.case_id, str(case.input), SKIPPED, case.skipped))
            continue
        folder = root / case.case_id
        summary, other = previous_result(folder, case, bundle, options) if folder.exists() else (None, None)
        if summary is not None and not options.force:
            message = "segmented by an earlier run with the same model; --force segments it again"
            ready.append(summary_row(case.case_id, str(case.input), SKIPPED, summary, summary.get("timings_s", {}).get("total"), message))
        elif other is not None and not options.force:
            ready.append(failed_row(case, f"{folder} holds {other}; pass --force to replace it, or choose another output folder.", bundle))
        else:
            to_run.append(case)
    return to_run, ready


# --------------------------------------------------------------------------- worker processes

_worker: CaseWorker | None = None
"""The model of this worker process (set by ``_start_worker``)."""


_ctrl_c: bool = True
"""Whether Ctrl-C stops this worker's case: as it stops the parent (a background job ignores it)."""


def _start_worker(model: str, options: CaseOptions, threads: int, devices, ctrl_c: bool) -> None:
    """Initializer of a worker process: load the model once; take a GPU from ``devices`` when given."""
    global _worker, _ctrl_c
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops a worker only inside a case (_run_in_worker)
    _ctrl_c = ctrl_c
    device = devices.get() if devices is not None else options.device
    _worker = CaseWorker(model, replace(options, device=device), threads)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt inside the block, so that the case's staging folder is removed."""
    if _ctrl_c:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with sigterm_as_interrupt():
            yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_in_worker(case: Case, root: Path) -> Row:
    with _interruptible():
        return _worker.run(case, root)


def cpu_cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_devices(device: str, workers: int) -> list[str] | None:
    """One GPU per worker (``cuda:i``, in turn) where ``device`` lets AbdoSeg choose and there are several; else None."""
    if device not in ("auto", "cuda"):
        return None
    import torch

    gpus = torch.cuda.device_count()
    return [f"cuda:{index % gpus}" for index in range(workers)] if gpus > 1 else None


def run_in_processes(cases: list[Case], root: Path, bundle: ModelBundle, options: CaseOptions, workers: int,
                     started: Started, finished: Finished, recovered: Recovered) -> None:
    """Segment ``cases`` in ``workers`` processes, at most one case each at a time.

    When a worker dies, every case then running is run again, alone, in a new pool, so that the case that killed
    it is the one that fails. Raises AbdoSegError when worker processes cannot be started at all.
    """
    context = multiprocessing.get_context("spawn")  # not fork: the parent's torch threads do not survive a fork
    threads = max(1, cpu_cores() // workers)
    todo, suspects = deque(cases), deque()
    fruitless = 0  # pools in a row that broke before any case finished
    rows = 0

    def count(row: Row) -> None:
        nonlocal rows
        rows += 1
        finished(row)

    while todo or suspects:
        devices = worker_devices(options.device, workers)
        queue = None
        if devices:
            queue = context.Queue()
            for device in devices:
                queue.put(device)
        initargs = (str(bundle.path), options, threads, queue, signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)
        pool = ProcessPoolExecutor(workers, context, initializer=_start_worker, initargs=initargs)
        running: dict[Future, tuple[Case, bool]] = {}
        before, broken = rows, True
        try:
            broken = _drain(pool, workers, todo, suspects, running, root, bundle, started, count, recovered)
        except KeyboardInterrupt:
            _stop(running)
            raise
        finally:
            _close(pool, broken)
        fruitless = fruitless + 1 if broken and rows == before else 0
        if fruitless == MAX_FRUITLESS_POOLS:
            raise AbdoSegError(f"the worker processes for {len(todo) + len(suspects)} case(s) could not be started "
                               f"({MAX_FRUITLESS_POOLS} tries); run with --workers 1 to segment them in this process.")


MAX_FRUITLESS_POOLS = 3
"""Worker pools in a row that may break before any case finishes, before the run gives up."""


def _drain(pool: ProcessPoolExecutor, workers: int, todo: deque, suspects: deque, running: dict, root: Path,
           bundle: ModelBundle, started: Started, finished: Finished, recovered: Recovered) -> bool:
    """Run cases in ``pool`` until none is left (False) or a worker died (True; the cases it may have broken are
    then in ``suspects``, to run again alone)."""
    broken = False
    while True:
        while not broken:
            if suspects:
                if running:
                    break
                source, alone = suspects, True
            elif todo and len(running) < workers:
                source, alone = todo, False
            else:
                break
            case = source.popleft()
            try:
                future = pool.submit(_run_in_worker, case, root)
            except (BrokenProcessPool, OSError):  # a worker died while another one was being started
                source.appendleft(case)
                broken = True
                break
            started(case)
            running[future] = (case, alone)
        if not running:
            return broken
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            case, alone = running.pop(future)
            error = future.exception()  # the worker's exception, not raised here: a Ctrl-C to this process is raised as itself
            if error is None:
                finished(future.result())
            elif isinstance(error, BrokenProcessPool):
                broken = True
                if (row := recovered(case)) is not None:
                    finished(row)
                    continue
                if not alone:
                    suspects.append(case)
                    continue
                finished(failed_row(case, f"the worker process segmenting {case.input} ended abruptly (it crashed, or was killed, "
                                          f"for example for lack of memory); nothing was written for this case.", bundle))
            elif isinstance(error, KeyboardInterrupt):  # a signal to that worker alone
                finished(failed_row(case, f"the worker process segmenting {case.input} was stopped by a signal.", bundle))
            else:  # CaseWorker.run turns every Exception into a row
                raise error


def _stop(running: dict[Future, tuple[Case, bool]]) -> None:
    """After Ctrl-C: drop the cases not started and give the running ones ``GRACE_S`` to stop and remove their
    staging folders (Ctrl-C reached them too), or to finish."""
    for future in running:
        future.cancel()
    wait(running, timeout=GRACE_S)


def _close(pool: ProcessPoolExecutor, broken: bool) -> None:
    """Shut ``pool`` down: its workers end when idle; a broken or interrupted pool's are stopped, since the
    executor's own clean-up can wait forever for a worker that was being started when another died."""
    if not broken:
        pool.shutdown(wait=True)
        return
    pool.shutdown(wait=False, cancel_futures=True)
    for process in multiprocessing.active_children():  # the pool's workers: this process starts no others
        process.terminate()
    for process in multiprocessing.active_children():
        process.join(GRACE_S)
        if process.is_alive():
            process.kill()
