"""Time to build and write the organ surfaces of a 512x512x200 labelmap.

    .venv/bin/python benchmarks/surface_speed.py [--repeat 3] [--smp-threads N]

The labelmap is the bundled reference segmentation (122x101x112 voxels of 3 mm) resampled
nearest-neighbour onto a 512x512x200 grid over the same field of view (about 0.715 x 0.592 x
1.68 mm), built in memory. Prints markdown tables:

1. per organ: cropping + surface (surfaces.organ_surface: flying edges, smoothing 0.5,
   normals) and writing its binary STL, after the one pass that finds the organs' boxes;
2. per format: ``export_surfaces`` end to end (boxes, surfaces, files), one file per organ.

Each time is the median of ``--repeat`` runs. VTK runs as AbdoSeg runs it: with its default
SMP backend (Sequential in the PyPI wheel: one thread); ``--smp-threads N`` tries its
STDThread backend with N threads instead. Times are only as steady as the machine: run on an
idle one.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import median_time
from vtkmodules.vtkCommonCore import vtkSMPTools

from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.io.regrid import labels_onto_grid
from AbdoSegLib.resources import SAMPLE_REFERENCE
from AbdoSegLib.surfaces.mesh_files import FORMATS, write_meshes
from AbdoSegLib.surfaces.meshes import export_surfaces, organ_boxes, organ_surface

GRID = (512, 512, 200)


def resampled_reference(grid: tuple[int, int, int] = GRID) -> Image:
    """The bundled reference labels on ``grid`` voxels over the same field of view (nearest neighbour).

    New voxel o along an axis of n -> m voxels sits at old index (o + 0.5) n / m - 0.5, so
    the outer voxel faces stay where they are.
    """
    labels = read_image(SAMPLE_REFERENCE)
    scale = np.array(labels.shape, dtype=np.float64) / np.array(grid)
    new_to_old = np.eye(4)
    new_to_old[:3, :3] = np.diag(scale)
    new_to_old[:3, 3] = 0.5 * scale - 0.5
    target = Image(np.zeros(grid, dtype=np.uint8), labels.affine @ new_to_old)
    return labels_onto_grid(labels, target)


def per_organ_table(labels: Image, folder: Path, repeat: int) -> list[str]:
    boxes_s, boxes = median_time(lambda: organ_boxes(labels.array), repeat)
    rows = [
        "| organ | voxels | triangles | surface (s) | write STL (s) | surface + write (s) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| (find the organs' boxes, one pass) | | | {boxes_s:.3f} | | {boxes_s:.3f} |",
    ]
    total_surface, total_write = boxes_s, 0.0
    for organ, box in boxes.items():
        surface_s, mesh = median_time(lambda: organ_surface(labels, organ, box, "lps"), repeat)
        write_s, _ = median_time(lambda: write_meshes({organ: mesh}, folder / f"{organ.name}_LPS.stl", "LPS"), repeat)
        voxels = int(np.count_nonzero(labels.array[box] == organ.label))
        rows.append(f"| {organ.name} | {voxels:,} | {mesh.GetNumberOfPolys():,} | {surface_s:.3f} | {write_s:.3f} | {surface_s + write_s:.3f} |")
        total_surface += surface_s
        total_write += write_s
    rows.append(f"| **total** | | | {total_surface:.3f} | {total_write:.3f} | **{total_surface + total_write:.3f}** |")
    return rows


def per_format_table(labels: Image, folder: Path, repeat: int) -> list[str]:
    rows = ["| format | files | size (MB) | export_surfaces end to end (s) |", "|---|---:|---:|---:|"]
    for fmt in FORMATS:
        seconds, written = median_time(lambda: export_surfaces(labels, folder / fmt, fmt), repeat)
        size = sum(path.stat().st_size for path in written) / 1e6
        rows.append(f"| {fmt} | {len(written)} | {size:.1f} | {seconds:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is shown (default 3)")
    parser.add_argument("--smp-threads", type=int, default=0, help="use VTK's STDThread backend with N threads (default: VTK's default)")
    args = parser.parse_args()
    if args.smp_threads:
        vtkSMPTools.SetBackend("STDThread")
        vtkSMPTools.Initialize(args.smp_threads)

    start = time.perf_counter()
    labels = resampled_reference()
    build_s = time.perf_counter() - start
    spacing = " x ".join(f"{s:.3f}" for s in labels.spacing)
    print(f"labelmap {'x'.join(map(str, labels.shape))} voxels of {spacing} mm (built in {build_s:.1f} s); "
          f"VTK SMP {vtkSMPTools.GetBackend()}, {vtkSMPTools.GetEstimatedNumberOfThreads()} thread(s); "
          f"{os.cpu_count()} CPUs ({platform.machine()}); median of {args.repeat}\n")
    with tempfile.TemporaryDirectory(prefix="abdoseg-surface-bench-") as folder:
        print("\n".join(per_organ_table(labels, Path(folder), args.repeat)))
        print()
        print("\n".join(per_format_table(labels, Path(folder), args.repeat)))


if __name__ == "__main__":
    main()
