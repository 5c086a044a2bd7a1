"""Time per stage of ``segment`` with a single-stage and a two-stage bundle, on the 512x512x200 CT.

    .venv/bin/python benchmarks/two_stage_speed.py [--model BUNDLE] [--fine-spacing 1.5] [--fine-organs NAME...]
                                                   [--two-stage BUNDLE] [--threads 2] [--repeat 1] [--device cpu|cuda]

The CT is the one of ``pipeline_speed.py`` (the sample resampled onto 512x512x200 voxels of
0.8 x 0.8 x 1.5 mm). A two-stage bundle (``--two-stage``, or a two-stage ``--model`` such as the bundled
default) is timed against its own first stage. A single-stage ``--model`` is timed against itself with a
second stage of the default V-Net architecture (``VNetConfig()``) and random weights: time does not depend
on them, and the trained first stage finds the organs whose crops the second stage runs over
(``inference/fine_stage.py``: the organ's box plus ``crop_margin_mm``, here TrainConfig's default), for the
organs of ``--fine-organs``.
``segment`` runs in this process on the CT already read (no reading or writing); the table gives the
median over ``--repeat`` runs of each stage of ``Prediction.timings_s``.

Numbers are only as steady as the machine: run it on an idle one.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
from pathlib import Path

import torch
from pipeline_speed import build_test_ct

from abdoseg_train.config import TrainConfig
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.bundle import FineStage, ModelBundle, load_bundle, save_bundle
from AbdoSegLib.model.vnet import VNet, VNetConfig
from AbdoSegLib.organs import ORGAN_NAMES
from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT

STAGES = ("preprocess", "inference", "postprocess", "fine", "mirror_check")


def two_stage_bundle(coarse: ModelBundle, fine_spacing: float, organs: tuple[str, ...], folder: Path):
    """The single-stage bundle ``coarse`` with a random second stage of the default architecture refining ``organs``,
    written to ``folder`` and loaded."""
    defaults = TrainConfig()
    torch.manual_seed(0)
    fine = FineStage(VNet(VNetConfig()), (fine_spacing,) * 3, defaults.crop_margin_mm, defaults.inference_patch, organs=organs)
    path = folder / "two-stage.safetensors"
    save_bundle(path, coarse.network, coarse.preprocessing, coarse.patch_size, "benchmark-two-stage", "benchmark",
                overlap=coarse.overlap, training=coarse.metadata.get("training"), fine=fine)
    return coarse, load_bundle(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE, help="the bundle to time: a two-stage one against its first stage, "
                        "a single-stage one with a random second stage")
    parser.add_argument("--fine-spacing", type=float, default=1.5, help="the second stage's voxel size in mm")
    parser.add_argument("--fine-organs", nargs="+", choices=ORGAN_NAMES, default=ORGAN_NAMES, help="the organs the second stage refines")
    parser.add_argument("--two-stage", type=Path, default=None, help="a trained two-stage bundle to time (instead of a random second stage)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ct = read_image(build_test_ct(SAMPLE_CT))
    given = load_bundle(args.two_stage or args.model)
    if given.fine is not None:
        bundles, weights = (dataclasses.replace(given, fine=None), given), "trained"
    elif args.two_stage:
        raise SystemExit(f"{args.two_stage} has no second stage.")
    else:
        with tempfile.TemporaryDirectory() as folder:
            bundles, weights = two_stage_bundle(given, args.fine_spacing, tuple(args.fine_organs), Path(folder)), "random"
    fine = bundles[1].fine
    print(f"CT 512x512x200 of 0.8x0.8x1.5 mm; {bundles[1].model_id}; second stage {min(fine.spacing_mm):g} mm, width "
          f"{fine.network.config.width}, {weights} weights, crop margin {fine.crop_margin_mm:g} mm, window {'x'.join(map(str, fine.patch_size))}; "
          f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, device {args.device}\n")
    print(f"| bundle | {' | '.join(STAGES)} | total s | organs refined |\n|---|{'---:|' * (len(STAGES) + 2)}")
    for label, bundle in zip(("single stage", "two stages"), bundles):
        runs = [segment(ct, bundle, device=args.device) for _ in range(args.repeat)]
        medians = [statistics.median(run.timings_s.get(stage, 0.0) for run in runs) for stage in STAGES]
        found = [name for name, decision in runs[-1].presence.items() if decision.found]
        refined = ", ".join(name for name in found if name in bundle.fine.organs) if bundle.fine else "-"
        print(f"| {label} | {' | '.join(f'{s:.2f}' for s in medians)} | {sum(medians):.2f} | {refined} |")


if __name__ == "__main__":
    main()
