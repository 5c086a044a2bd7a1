"""Print what a bundle calls a fluid cyst inserted into real CT beside each organ (``abdoseg_train.inserted_cysts``).

    python Training/scripts/inserted_cysts.py [--model BUNDLE] [--data SHARED_DATA] [--volume ML]

Scans: the bundled sample (unenhanced) and 3D-IRCADb-01 patient 17 (portal-venous) from ``--data``. Beside
each organ, on two sides (in front of and below it; beside and below it, away from the midline), a ball of
``--volume`` mL of fluid (``CYST_HU``, with the scan's own noise) takes the place of whatever is neither organ
nor bone, and the scan is segmented by ``inference.predict.segment``. Each row gives the cyst's volume as
inserted, how much of it the bundle labelled as each organ (mL, after the not-found decision), and the
Dice of the organ the cyst touches: against the reference where the case labels that organ, else
(marked *) against the bundle's own labels on the scan without the cyst, whose organ also places the cyst, and
the organs whose label the QA finds fluid in (``analysis.fluid.fluid_region``, mL).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from abdoseg_train.inserted_cysts import cyst_beside, noise_sd, paint_cyst, replaceable_tissue
from AbdoSegLib.analysis.fluid import fluid_region
from AbdoSegLib.analysis.metrics import dice
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.bundle import load_bundle
from AbdoSegLib.organs import ORGANS
from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT, SAMPLE_REFERENCE

AWAY_FROM_MIDLINE = {"liver": 1.0, "right_kidney": 1.0, "left_kidney": -1.0, "spleen": -1.0}  # RAS x: + is the right
SEED = 0


def sides(organ_name: str) -> dict[str, tuple[float, float, float]]:
    """The two RAS directions a cyst is placed along, by name."""
    return {"front, below": (0.0, 1.0, -1.0), "outside, below": (AWAY_FROM_MIDLINE[organ_name], 0.0, -1.0)}


def case_rows(name: str, ct, reference, labelled: set[str], bundle, volume_ml: float) -> None:
    """Print one row per organ and side for one scan."""
    plain = segment(ct, bundle, "cpu").labels.array
    unlabelled = [organ.label for organ in ORGANS if organ.name not in labelled]
    truth = np.where(np.isin(plain, unlabelled) & (reference.array == 0), plain, reference.array)
    replaceable, noise_hu = replaceable_tissue(ct, truth), noise_sd(ct)
    for organ in ORGANS:
        if not (truth == organ.label).any():
            continue
        for side, direction in sides(organ.name).items():
            cyst = cyst_beside(truth == organ.label, replaceable, ct.affine, direction, volume_ml)
            painted = paint_cyst(ct, cyst, noise_hu, np.random.default_rng(SEED))
            labels = segment(painted, bundle, "cpu").labels.array
            called = ", ".join(f"{(labels[cyst] == o.label).sum() * ct.voxel_volume_ml:.1f}" for o in ORGANS)
            score = dice(labels == organ.label, truth == organ.label)
            star = "" if organ.name in labelled else "*"
            fluid = {o.name: fluid_region(labels == o.label, painted.array, ct.spacing) for o in ORGANS}
            warned = ", ".join(f"{n} {r['volume_ml']:.0f}" for n, r in fluid.items() if r) or "none"
            print(f"| {name} | {organ.name} | {side} | {cyst.sum() * ct.voxel_volume_ml:.0f} | {called} | {score:.3f}{star} | {warned} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("ABDOSEG_DATA", "../shared/data")))
    parser.add_argument("--volume", type=float, default=200.0, help="the cyst's volume in mL before bone and organs cut it")
    args = parser.parse_args()
    ircad = args.data / "ircad_17"
    if not ircad.is_dir():
        raise SystemExit(f"{ircad} is missing: --data must hold the shared data's ircad_17.")
    bundle = load_bundle(args.model)
    names = ", ".join(organ.name for organ in ORGANS)
    print(f"{bundle.model_id}, cysts of {args.volume:g} mL\n\n| scan | beside | side | cyst (mL) | labelled {names} (mL) | "
          f"organ's Dice | QA: fluid in (mL) |\n|---|---|---|---:|---|---:|---|")
    all_organs = {organ.name for organ in ORGANS}
    case_rows("sample", read_image(SAMPLE_CT), read_image(SAMPLE_REFERENCE), all_organs, bundle, args.volume)
    labelled = set(json.loads((ircad / "case.json").read_text())["labelled"])
    case_rows("ircad_17", read_image(ircad / "ct.nii.gz"), read_image(ircad / "label.nii.gz"), labelled, bundle, args.volume)


if __name__ == "__main__":
    main()
