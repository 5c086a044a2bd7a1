"""The engine on the CPU and on a CUDA GPU: the same labels, and how long each takes.

    .venv/bin/python benchmarks/device_agreement.py [--model BUNDLE] [--ct CT] [--repeat 3]

Segments one CT in memory (``predict.segment``: preprocessing, sliding-window inference,
clean-up, return to the input grid; no reading or writing) on each device, and prints a
markdown table: per organ, the voxels each device labels and the Dice between them (CUDA
runs the network under fp16 autocast, the CPU in float32), then the median seconds per stage
over ``--repeat`` runs after one warm-up. Without a GPU it says so and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from timing import median_time

from AbdoSegLib.analysis.metrics import dice
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.bundle import load_bundle
from AbdoSegLib.organs import ORGANS
from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT

DEVICES = ("cpu", "cuda")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--ct", type=Path, default=SAMPLE_CT)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("PyTorch finds no CUDA GPU here; this benchmark compares the CPU with one.")
        return 1
    bundle, image = load_bundle(args.model), read_image(args.ct)
    runs = {}
    for device in DEVICES:
        segment(image, bundle, device)  # warm-up: kernels, autotuning, memory pools
        runs[device] = [segment(image, bundle, device) for _ in range(args.repeat)]
    labels = {device: runs[device][-1].labels.array for device in DEVICES}
    print(f"{args.ct.name}: {'x'.join(map(str, image.shape))} voxels; {torch.cuda.get_device_name()}; "
          f"{torch.get_num_threads()} CPU threads; torch {torch.__version__}\n")
    print("| organ | voxels CPU | voxels CUDA | Dice CPU vs CUDA |\n|---|---|---|---|")
    for organ in ORGANS:
        cpu, cuda = labels["cpu"] == organ.label, labels["cuda"] == organ.label
        score = dice(cpu, cuda)
        print(f"| {organ.name} | {int(cpu.sum())} | {int(cuda.sum())} | {'-' if score is None else f'{score:.4f}'} |")
    print(f"\nvoxels labelled alike: {float(np.mean(labels['cpu'] == labels['cuda'])):.6f}\n")
    stages = list(runs["cpu"][0].timings_s)
    print("| device | " + " | ".join(stages) + " | total s |\n|---|" + "---|" * (len(stages) + 1))
    for device in DEVICES:
        medians = [float(np.median([run.timings_s[stage] for run in runs[device]])) for stage in stages]
        print(f"| {device} | " + " | ".join(f"{m:.2f}" for m in medians) + f" | {sum(medians):.2f} |")
    seconds, _ = median_time(lambda: segment(image, bundle, "cuda"), args.repeat)
    print(f"\nCUDA, whole call (model moved to the GPU included): {seconds:.2f} s; "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
