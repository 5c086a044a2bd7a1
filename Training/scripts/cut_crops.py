"""Print the cut-crop figures of the model card's selection rule (stages 11-13, and the second stage) for a bundle.

    python Training/scripts/cut_crops.py [--model BUNDLE] [--data SHARED_DATA]

Ten crops cut through the organs (eight of the bundled sample, two of 3D-IRCADb-01 patient 17 from
``--data``) are segmented by ``inference.predict.segment``; each organ the crop's reference labels with at
least ``MIN_ML`` in view gets its Dice after the not-found decision (not found: Dice 0), and the mean over
them is the rule's part (a). Two crops of the sample without any of the four organs give part (c): the
volume drawn before the not-found decision (mL, model grid) and the organs found. Crops are
``presence_table.crop`` specs on the array as read.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from presence_table import crop

from AbdoSegLib.analysis.metrics import dice
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.bundle import load_bundle
from AbdoSegLib.organs import ORGANS
from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT, SAMPLE_REFERENCE

SAMPLE_CUTS = ("z[:80]", "z[30:90]", "z[95:]", "z[100:]", "y[:45]", "x[85:]", "x[:60]", "x[62:]")
IRCAD_CUTS = ("z[:40]", "z[60:]")
ORGAN_FREE = ("z[:50]", "z[:60]")  # the sample's lowest 150 and 180 mm: below both kidneys
MIN_ML = 10.0  # an organ with less in view is not scored


def cut_rows(name: str, ct, reference, labelled: tuple[int, ...], cuts: tuple[str, ...], bundle) -> list[float]:
    """Print one row per scored organ of each crop; return their Dice figures."""
    dices = []
    for spec in cuts:
        truth_image = crop(reference, spec)
        prediction = segment(crop(ct, spec), bundle, "cpu")
        for organ in ORGANS:
            truth = truth_image.array == organ.label
            in_view = truth.sum() * truth_image.voxel_volume_ml
            if organ.label not in labelled or in_view < MIN_ML:
                continue
            score = dice(prediction.labels.array == organ.label, truth)  # never None: the organ is in view
            dices.append(score)
            print(f"| {name} {spec} | {organ.name} | {in_view:.0f} | {prediction.presence[organ.name].status} | {score:.3f} |")
    return dices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("ABDOSEG_DATA", "../shared/data")))
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    sample = read_image(SAMPLE_CT), read_image(SAMPLE_REFERENCE)
    ircad = args.data / "ircad_17"
    if not ircad.is_dir():
        raise SystemExit(f"{ircad} is missing: --data must hold the shared data's ircad_17.")
    print(f"{bundle.model_id}\n\n| crop | organ | in view (mL) | decision | Dice |\n|---|---|---:|---|---:|")
    dices = cut_rows("sample", *sample, tuple(organ.label for organ in ORGANS), SAMPLE_CUTS, bundle)
    dices += cut_rows("ircad_17", read_image(ircad / "ct.nii.gz"), read_image(ircad / "label.nii.gz"), (1,), IRCAD_CUTS, bundle)
    print(f"\n(a) mean Dice over {len(dices)} organ-crops: {np.mean(dices):.4f}")
    drawn, found = 0.0, []
    for spec in ORGAN_FREE:
        prediction = segment(crop(sample[0], spec), bundle, "cpu")
        drawn += sum(decision.volume_ml for decision in prediction.presence.values())
        found += [f"{name} in {spec}" for name, decision in prediction.presence.items() if decision.found]
    print(f"(c) organ-free crops {', '.join(ORGAN_FREE)}: {drawn:.0f} mL drawn, found: {', '.join(found) or 'none'}")


if __name__ == "__main__":
    main()
