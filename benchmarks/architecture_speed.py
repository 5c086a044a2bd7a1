"""Inference time of candidate architectures and resolutions, against the 8 s budget.

    .venv/bin/python benchmarks/architecture_speed.py [--threads 2] [--repeat 2]

For a 512x512x200 CT of 0.8 x 0.8 x 1.5 mm (410 x 410 x 300 mm, the scan of
``pipeline_speed.py``) the model grid at spacing s has shape round(FOV / s). Each candidate
V-Net (random weights: speed does not depend on them) runs the engine's own sliding window
(``predict.infer_probabilities``, the bundle's 160^3 window, overlap 0.25) on that grid,
float32 on the CPU, and the median of ``--repeat`` runs is printed with the network's size.

Coarse-to-fine candidates add, after the 3 mm pass, one finer pass per organ on a crop of
the organ's typical adult extent plus a 15 mm margin (liver 200 x 160 x 180 mm, each kidney
70 x 70 x 120 mm, spleen 120 x 100 x 130 mm).

The rest of the pipeline (reading, resampling, return to the input grid, writing) took 1.8 s
and interpreter start with imports 1.5 s in ``pipeline_speed.py`` (abdoseg-vnet-0.9, 2026-12-01),
so inference must stay under about 4.7 s for the whole 8 s. A bundle may store float16 weights
(``export --half``): the size printed, against the 25 MB target. Times are only as
steady as the machine: run on an idle one.
"""

from __future__ import annotations

import argparse
import platform

import torch
from pipeline_speed import GRID, SPACING_MM
from timing import median_time

from AbdoSegLib.inference.predict import infer_probabilities, window_size
from AbdoSegLib.model.vnet import VNet, VNetConfig

FIELD_OF_VIEW_MM = tuple(n * s for n, s in zip(GRID, SPACING_MM))  # the scan of pipeline_speed.py
WINDOW = (160, 160, 160)
ORGAN_EXTENTS_MM = {"liver": (200, 160, 180), "right kidney": (70, 70, 120), "left kidney": (70, 70, 120), "spleen": (120, 100, 130)}
MARGIN_MM = 15.0
BUDGET_S = 4.7

# (label, spacing mm of the whole-scan pass, V-Net config, spacing mm of per-organ passes or None)
CANDIDATES = [
    ("default: 3 mm, width 8, 3^3 kernels", 3.0, VNetConfig(width=8), None),
    ("3 mm, width 12", 3.0, VNetConfig(width=12), None),
    ("3 mm, width 16", 3.0, VNetConfig(width=16), None),
    ("3 mm, width 8, 5^3 kernels", 3.0, VNetConfig(width=8, kernel_size=5), None),
    ("2 mm, width 8", 2.0, VNetConfig(width=8), None),
    ("1.5 mm, width 8", 1.5, VNetConfig(width=8), None),
    ("coarse-to-fine: 3 mm + organ crops at 1.5 mm, width 8", 3.0, VNetConfig(width=8), 1.5),
]


def grid_shape(extent_mm: tuple[float, ...], spacing_mm: float) -> tuple[int, int, int]:
    return tuple(max(1, round(e / spacing_mm)) for e in extent_mm)


def inference_seconds(network: VNet, shape: tuple[int, int, int], repeat: int) -> float:
    volume = torch.zeros(shape)
    roi = window_size(shape, WINDOW, network.config.divisor)
    return median_time(lambda: infer_probabilities(network, volume, roi, 0.25, torch.device("cpu")), repeat)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CT 512x512x200 of 0.8x0.8x1.5 mm; torch {torch.__version__}, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}; budget for inference ~{BUDGET_S} s\n")
    print("| candidate | model grid | parameters (M) | float16 MB | inference s | within budget |\n|---|---|---:|---:|---:|---|")
    for label, spacing, config, fine_spacing in CANDIDATES:
        network = VNet(config).eval()
        shape = grid_shape(FIELD_OF_VIEW_MM, spacing)
        seconds = inference_seconds(network, shape, args.repeat)
        grids = "x".join(map(str, shape))
        if fine_spacing:
            for extent in ORGAN_EXTENTS_MM.values():
                crop = grid_shape(tuple(e + 2 * MARGIN_MM for e in extent), fine_spacing)
                seconds += inference_seconds(network, crop, args.repeat)
            grids += f" + 4 organ crops at {fine_spacing:g} mm"
        parameters = sum(p.numel() for p in network.parameters())
        print(f"| {label} | {grids} | {parameters / 1e6:.2f} | {parameters * 2 / 2**20:.1f} | {seconds:.2f} | {'yes' if seconds <= BUDGET_S else 'no'} |")


if __name__ == "__main__":
    main()
