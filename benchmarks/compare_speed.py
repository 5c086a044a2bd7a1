"""Speed of ``compare_labelmaps`` next to DeepMind's surface-distance, on a 512x512x200 grid.

    .venv/bin/python benchmarks/compare_speed.py [--cores 2] [--repeat 3]

The reference is the bundled sample reference (122x101x112 voxels of 3 mm, four organs)
resampled nearest-neighbour onto a 512x512x200 grid over the same field of view (about
0.715 x 0.592 x 1.68 mm). The prediction is that reference a little wrong: the liver moved
two voxels along i, the kidneys eroded by one voxel, the spleen dilated by one voxel.

Times (wall, the process pinned to ``--cores`` CPUs; for AbdoSeg also the process's CPU time,
which a busy machine inflates less than the wall time):

- AbdoSeg: ``compare_labelmaps`` for the 4 organs (Dice, HD, HD95, ASSD, NSD, volumes), the
  median of ``--repeat`` calls after one warm-up call (the first call also builds the
  surfel table with VTK: shown apart);
- surface-distance: per organ ``compute_surface_distances`` on the full-grid masks, then
  ``compute_robust_hausdorff`` (100 and 95), ``compute_average_surface_distance``,
  ``compute_surface_dice_at_tolerance`` and ``compute_dice_coefficient``, once.

A second table gives both packages' values. Needs the test extra (``surface-distance``).
Times are only as steady as the machine: run on an idle one.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
from scipy import ndimage

from AbdoSegLib.analysis.metrics import compare_labelmaps
from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.io.regrid import labels_onto_grid
from AbdoSegLib.organs import ORGANS
from AbdoSegLib.resources import SAMPLE_REFERENCE

GRID = (512, 512, 200)


def reference_on_grid(grid: tuple[int, int, int] = GRID) -> Image:
    """The bundled reference on ``grid`` voxels over the same field of view (outer voxel faces kept)."""
    labels = read_image(SAMPLE_REFERENCE)
    scale = np.array(labels.shape, dtype=np.float64) / np.array(grid)
    new_to_old = np.eye(4)
    new_to_old[:3, :3] = np.diag(scale)
    new_to_old[:3, 3] = 0.5 * scale - 0.5
    return labels_onto_grid(labels, Image(np.zeros(grid, np.uint8), labels.affine @ new_to_old))


def imperfect_prediction(reference: Image) -> Image:
    """The reference with small errors: liver moved 2 voxels along i, kidneys eroded 1 voxel, spleen dilated 1 voxel."""
    out = np.zeros_like(reference.array)
    for organ in ORGANS:
        mask = reference.array == organ.label
        if organ.name == "liver":
            mask = np.roll(mask, 2, axis=0)
        elif organ.name.endswith("kidney"):
            mask = ndimage.binary_erosion(mask)
        else:
            mask = ndimage.binary_dilation(mask)
        out[mask & (out == 0)] = organ.label
    return reference.with_array(out)


def theirs(prediction: np.ndarray, reference: np.ndarray, label: int, spacing, tolerance: float) -> tuple[float, dict]:
    """surface-distance's metrics of one organ on full-grid masks: (wall seconds, values)."""
    import surface_distance

    start = time.perf_counter()
    pred, ref = prediction == label, reference == label
    distances = surface_distance.compute_surface_distances(ref, pred, spacing)
    to_pred, to_ref = surface_distance.compute_average_surface_distance(distances)
    ref_area, pred_area = distances["surfel_areas_gt"].sum(), distances["surfel_areas_pred"].sum()
    values = {
        "dice": surface_distance.compute_dice_coefficient(ref, pred),
        "hd": surface_distance.compute_robust_hausdorff(distances, 100),
        "hd95": surface_distance.compute_robust_hausdorff(distances, 95),
        "assd": (to_pred * ref_area + to_ref * pred_area) / (ref_area + pred_area),
        "nsd": surface_distance.compute_surface_dice_at_tolerance(distances, tolerance),
    }
    return time.perf_counter() - start, values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2, help="CPUs the process may run on (default: 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls of compare_labelmaps (default: 3)")
    args = parser.parse_args()
    if importlib.util.find_spec("surface_distance") is None:
        print("compare_speed: surface-distance is missing; install the test extra: .venv/bin/pip install -e '.[test]'", file=sys.stderr)
        return 1
    warnings.simplefilter("ignore", DeprecationWarning)  # surface-distance uses scipy.ndimage.filters / morphology
    cpus = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, cpus)

    reference = reference_on_grid()
    prediction = imperfect_prediction(reference)
    spacing = tuple(float(s) for s in reference.spacing)

    start = time.perf_counter()
    ours = compare_labelmaps(prediction, reference)
    cold = time.perf_counter() - start
    times, cpu_times = [], []
    for _ in range(args.repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        ours = compare_labelmaps(prediction, reference)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    their_times, their_values = {}, {}
    for organ in ORGANS:
        their_times[organ.name], their_values[organ.name] = theirs(
            prediction.array, reference.array, organ.label, spacing, ours[organ.name]["nsd_tolerance_mm"]
        )

    print(f"grid {'x'.join(map(str, GRID))}, spacing {' x '.join(f'{s:.3f}' for s in spacing)} mm; "
          f"{len(cpus)} CPU(s) {cpus} of {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}; "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}")
    print()
    print("| | AbdoSeg `compare_labelmaps` | surface-distance |")
    print("|---|---:|---:|")
    print(f"| 4 organs, wall s | {statistics.median(times):.2f} (median of {args.repeat}; first call {cold:.2f}) "
          f"| {sum(their_times.values()):.2f} |")
    print(f"| 4 organs, CPU s of the process (all its threads) | {statistics.median(cpu_times):.2f} | |")
    for organ in ORGANS:
        print(f"| {organ.name} | | {their_times[organ.name]:.2f} |")
    print()
    print("| organ | metric | AbdoSeg | surface-distance | relative difference |")
    print("|---|---|---:|---:|---:|")
    for organ in ORGANS:
        for key, value in their_values[organ.name].items():
            mine = ours[organ.name][key]
            difference = abs(mine - value) / abs(value) if value else abs(mine)
            print(f"| {organ.name} | {key} | {mine:.4f} | {value:.4f} | {difference:.1e} |")
    print()
    counts = ", ".join(f"{organ.name} {int(np.count_nonzero(reference.array == organ.label))}" for organ in ORGANS)
    print(f"reference voxels per organ: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
