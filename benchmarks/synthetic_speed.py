"""Time to make one synthetic training patch, next to one training step of the network.

    .venv/bin/python benchmarks/synthetic_speed.py [ANATOMY_MAP] [--repeat 10] [--threads 2]

ANATOMY_MAP is an ``*_anatomy.nii.gz`` with its detail map and JSON beside it (default: the
project's shared data, ``../shared/data/anatomy/ircad_05_anatomy.nii.gz``). The map is read
onto the default model grid (3 mm), then for the default training patch (80^3, cropped at 100^3)
the script times, as the median of ``--repeat`` runs:

1. the whole synthetic patch (``Augmenter``: crop, deformation of the maps, painting, scanner
   effects, HU window), and its painting and scanner-effect steps alone on a 80^3 block;
2. one training step of the default V-Net on a batch of 2 such patches (forward, partial-label
   loss, backward, Adam), for scale: the patches are made in the training process, so their
   time adds to each step.

Times are only as steady as the machine: run on an idle one.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
from timing import median_time

from abdoseg_train.anatomy import discover_anatomy, load_anatomy
from abdoseg_train.augment import Augmenter
from abdoseg_train.fit import TrainConfig
from abdoseg_train.losses import class_mask, partial_dice_ce_loss
from abdoseg_train.synthetic import corrupt, paint
from AbdoSegLib.model.vnet import VNet

DEFAULT_ANATOMY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "anatomy" / "ircad_05_anatomy.nii.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("anatomy", type=Path, nargs="?", default=DEFAULT_ANATOMY)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.anatomy.is_file():
        raise SystemExit(f"synthetic_speed: {args.anatomy} does not exist; give an anatomy map (*_anatomy.nii.gz).")
    torch.set_num_threads(args.threads)
    config = TrainConfig()
    anatomy = load_anatomy(discover_anatomy(args.anatomy)[0], config.preprocessing)
    augment = Augmenter(config.patch, seed=0, flip_probability=config.flip_probability, spec=config.preprocessing)
    rng = np.random.default_rng(0)
    x, y, z = (np.argwhere(anatomy.labels == 1).mean(axis=0) - np.array(config.patch) / 2).astype(int).clip(0)
    block = tuple(slice(s, s + n) for s, n in zip((x, y, z), config.patch))
    structures, depth = np.ascontiguousarray(anatomy.structures[block]), np.ascontiguousarray(anatomy.depth_mm[block])
    painted = paint(structures, depth, rng)

    network = VNet(config.network_config)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    samples = [augment(anatomy) for _ in range(config.batch_size)]
    images, labels = torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])
    mask = class_mask([s[2] for s in samples])

    def step() -> None:
        loss = partial_dice_ce_loss(network(images), labels, mask)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    rows = [
        ("synthetic patch (crop, deform, paint, scanner effects, window)", median_time(lambda: augment(anatomy), args.repeat)[0]),
        (f"  paint only, {structures.shape[0]}^3 block", median_time(lambda: paint(structures, depth, rng), args.repeat)[0]),
        (f"  scanner effects only, {structures.shape[0]}^3 block", median_time(lambda: corrupt(painted, config.spacing_mm[0], rng), args.repeat)[0]),
        (f"training step, batch {config.batch_size} (forward, loss, backward, Adam)", median_time(step, max(3, args.repeat // 3))[0]),
    ]
    print(f"anatomy {anatomy.name} on the {config.spacing_mm[0]:g} mm grid {anatomy.structures.shape}; patch {config.patch}; "
          f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}\n")
    print("| step | median s |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
