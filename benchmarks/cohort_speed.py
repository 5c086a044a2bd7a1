"""Cohort throughput: cases per minute of ``abdoseg segment FOLDER -o OUT`` on 10 scans, with one and two workers,
on this machine and through a local Ray instance.

    .venv/bin/python benchmarks/cohort_speed.py [--cases 10] [--device cpu|cuda] [--model BUNDLE]

Two cohorts of ``--cases`` scans: links to the bundled sample CT (122x101x112 voxels of 3 mm) and to the
512x512x200 CT of ``pipeline_speed.py`` (0.8 x 0.8 x 1.5 mm, built there and cached). Each cohort runs four
ways, each in a fresh child process, until its cohort.csv is written:

- local, 1 worker: ``--workers 1``, the cases one after the other in the command's own process;
- local, 2 workers: ``--workers 2``, two worker processes, each with half the CPU threads;
- Ray, 1 or 2 actors: the child starts a local Ray instance (``ray.init(num_cpus=all CPUs)``), then runs the
  command with ``--ray auto --workers N``: N actors sharing the CPUs.

Wall is the child's whole life: interpreter start, imports, model loading, worker or Ray start-up, every case.
Cases per minute = cases / wall * 60; "mean case" is the mean of cohort.csv's seconds (one case's wall time inside
its worker). Every input of a cohort is the same file behind another name, so it is read from the page cache.
Numbers are one run each and only as steady as the machine: run it on an idle one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline_speed import GRID, BenchError, build_test_ct, check_device, check_model, cpu_model

RUNS = [("local", 1), ("local", 2), ("Ray", 1), ("Ray", 2)]


def child_main(argv: list[str]) -> int:
    """``_child local|ray WORKERS REPORT -- SEGMENT-ARGS``: run the command (after starting Ray); report Ray's start time."""
    runner, workers, report = argv[0], argv[1], Path(argv[2])
    segment_args = argv[argv.index("--") + 1:]
    ray_start = None
    if runner == "ray":
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        segment_args += ["--ray", "auto"]
    from AbdoSegLib.cli import main

    code = main(["segment", *segment_args, "--workers", workers, "--progress", "none"])
    report.write_text(json.dumps({"ray_start_s": ray_start}))
    return code


def run(runner: str, workers: int, folder: Path, out: Path, model: Path, device: str) -> dict:
    """One cohort run in a child process: wall (s), Ray's start-up (s), cases done and the mean case seconds."""
    report = out.with_suffix(".json")
    argv = [sys.executable, str(Path(__file__).resolve()), "_child", runner.lower(), str(workers), str(report), "--",
            str(folder), "-o", str(out), "--model", str(model), "--device", device]
    start = time.perf_counter()
    child = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.perf_counter() - start
    if child.returncode != 0:
        tail = "\n  ".join((child.stdout + child.stderr).strip().splitlines()[-10:])
        raise BenchError(f"{runner} with {workers} worker(s) on {folder.name} failed (exit {child.returncode}):\n  {tail}")
    with open(out / "cohort.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    seconds = [float(row["seconds"]) for row in rows if row["status"] == "done"]
    return {"wall_s": wall, "ray_start_s": json.loads(report.read_text())["ray_start_s"], "done": len(seconds),
            "mean_case_s": sum(seconds) / max(len(seconds), 1)}


def cohort_folder(source: Path, cases: int, folder: Path) -> Path:
    """``folder`` holding ``cases`` links to ``source`` (case0.nii.gz, case1.nii.gz, ...)."""
    folder.mkdir(parents=True)
    for index in range(cases):
        (folder / f"case{index}.nii.gz").symlink_to(source)
    return folder


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return child_main(argv[1:])

    from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10, help="scans per cohort (default: 10)")
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE, help=f"model bundle (default: {DEFAULT_BUNDLE})")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the network runs (default: cpu)")
    args = parser.parse_args(argv)
    try:
        return benchmark(args, SAMPLE_CT)
    except BenchError as error:
        print(f"cohort_speed: {error}", file=sys.stderr)
        return 1


def benchmark(args: argparse.Namespace, sample: Path) -> int:
    check_model(args.model)
    if args.cases < 2:
        raise BenchError(f"--cases must be at least 2, got {args.cases}.")
    import ray
    import torch

    check_device(args.device)
    large = build_test_ct(sample)
    cohorts = [("sample 122x101x112", sample), (f"{'x'.join(map(str, GRID))}", large)]
    results = []
    with tempfile.TemporaryDirectory(prefix="abdoseg-cohort-bench-") as temporary:
        temporary = Path(temporary)
        for index, (name, source) in enumerate(cohorts):
            folder = cohort_folder(source, args.cases, temporary / f"cohort{index}")
            for runner, workers in RUNS:
                print(f"running {name}, {runner}, {workers} worker(s) ...", file=sys.stderr, flush=True)
                out = temporary / f"out{index}-{runner}-{workers}"
                results.append((name, runner, workers, run(runner, workers, folder, out, args.model, args.device)))

    print(f"## Cohort throughput: {args.cases} scans per cohort, device {args.device}\n")
    print("| cohort | runner | workers | wall (s) | cases per minute | mean case (s) | Ray start (s) | done |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, runner, workers, result in results:
        ray_start = "" if result["ray_start_s"] is None else f"{result['ray_start_s']:.1f}"
        print(f"| {name} | {runner} | {workers} | {result['wall_s']:.1f} | **{args.cases / result['wall_s'] * 60:.1f}** | "
              f"{result['mean_case_s']:.2f} | {ray_start} | {result['done']}/{args.cases} |")
    print()
    print(f"- each run is one child process from start to cohort.csv: interpreter, imports, model loading, worker or Ray start-up included; "
          f"the {args.cases} inputs of a cohort are links to one file ({large} for the large one)")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, Ray {ray.__version__}, "
          f"Python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
