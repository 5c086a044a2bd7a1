"""Print the table that chose the presence thresholds (``AbdoSegLib.inference.presence``) for a bundle.

    python Training/scripts/presence_table.py [--model BUNDLE] [--data SHARED_DATA]

Each row is a scan or a crop of one, segmented by ``inference.predict.segment`` with the bundle:
"in scan" is the reference volume inside the crop (mL; "-" when the organ is labelled and absent,
"?" when that case does not label it), "drawn" what the network labelled after clean-up (model grid,
mL), "confidence" and "edge" as the presence decision sees them, and the decision, with the Dice on the
crop where the reference labels the organ. Crops index the array as read (``x[62:]`` keeps voxels 62 and
up along the first axis). Scans in the repository always run; 3D-IRCADb-01 patient 17 and a synthetic
pelvis and chest painted from the shared anatomy maps (fixed seed) run when ``--data`` holds them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.io.regrid import labels_onto_grid
from AbdoSegLib.model.bundle import load_bundle
from AbdoSegLib.model.preprocessing import Preprocessing
from AbdoSegLib.organs import ORGANS
from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT, SAMPLE_REFERENCE

ROOT = Path(__file__).resolve().parents[2]
TEST_DATA = ROOT / "Testing" / "Data"
ALL = ("liver", "right_kidney", "left_kidney", "spleen")
SPEC = Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0))  # the grid the synthetic scans are painted on

SAMPLE_CROPS = ["", "z[95:]", "y[:45]", "z[100:]", "z[104:]", "z[:60]", "z[:50]", "z[:66]", "x[62:]", "x[66:]", "x[:60]",
                "x[85:]", "z[:80]", "z[30:90]"]
"""Crops of the sample CT (122x101x112 voxels of 3 mm, RAS): z[:60] ends below the kidneys (pelvis only),
z[95:] keeps the top of the abdomen, x[62:] the patient's right half."""


def crop(image: Image, spec: str) -> Image:
    """``image`` cut to ``spec`` ("" for all, or "x[a:b]", "y[..]", "z[..]" on the array axes), affine moved to match."""
    if not spec:
        return image
    axis = "xyz".index(spec[0])
    start, stop = (int(part) if part else None for part in spec[2:-1].split(":"))
    index = [slice(None)] * 3
    index[axis] = slice(start, stop)
    first = np.array([0.0, 0.0, 0.0, 1.0])
    first[axis] = range(image.shape[axis])[index[axis]][0]
    affine = image.affine.copy()
    affine[:3, 3] = (image.affine @ first)[:3]  # the crop's first voxel keeps its place in space
    return Image(np.ascontiguousarray(image.array[tuple(index)]), affine)


def rows(name: str, ct: Image, reference: Image | None, labelled: tuple[str, ...], bundle) -> list[str]:
    from AbdoSegLib.inference.predict import segment

    prediction = segment(ct, bundle, "cpu")
    lines = []
    for organ in ORGANS:
        decision = prediction.presence[organ.name]
        if organ.name in labelled and reference is not None:
            truth = reference.array == organ.label
            in_scan = truth.sum() * reference.voxel_volume_ml
            drawn = prediction.labels.array == organ.label
            denominator = truth.sum() + drawn.sum()
            dice = f"Dice {2 * (truth & drawn).sum() / denominator:.2f}" if truth.any() and decision.found else ""
            in_scan_text = f"{in_scan:.0f}" if truth.any() else "-"
        else:
            in_scan_text, dice = "?", ""
        if decision.confidence is None:
            continue
        lines.append(f"{name:<22}{organ.name:<14}{in_scan_text:>8}{decision.volume_ml:>7.0f}{decision.confidence:>12.3f}"
                     f"{'yes' if decision.touches_edge else 'no':>6}  {decision.status}{', ' + dice if dice else ''}")
    return lines


def cases(data: Path | None):
    """(name, CT, reference on the CT's grid or None, organs the reference labels) for each scan."""
    sample, sample_ref = read_image(SAMPLE_CT), read_image(SAMPLE_REFERENCE)
    for spec in SAMPLE_CROPS:
        yield f"sample {spec}".strip(), crop(sample, spec), crop(sample_ref, spec), ALL
    for folder, crops in ((TEST_DATA / "ts_dicom", [""]), (TEST_DATA / "msd_spleen_8", ["", "z[:7]"]),
                          ((data / "ircad_17") if data else None, ["", "z[:40]", "x[380:]"])):
        if folder is None or not folder.is_dir():
            continue
        ct = read_image(folder / "dicom" if (folder / "dicom").is_dir() else folder / "ct.nii.gz")
        reference = labels_onto_grid(read_image(folder / "label.nii.gz"), ct)
        labelled = tuple(json.loads((folder / "case.json").read_text())["labelled"])
        for spec in crops:
            yield f"{folder.name} {spec}".strip(), crop(ct, spec), crop(reference, spec), labelled


def synthetic_cases(data: Path | None):
    """Synthetic CT (fixed seed) of maps without the organs: TotalSegmentator s0000 (pelvis only) and the chest above
    the liver of 3D-IRCADb-01 patient 19 (its map, shared data only); the references are the maps' own labels."""
    from abdoseg_train.anatomy import discover_anatomy, load_anatomy
    from abdoseg_train.synthetic import synthesise

    maps = [(TEST_DATA / "anatomy_totalseg" / "s0000_anatomy.nii.gz", "")]
    if data is not None and (data / "anatomy" / "ircad_19_anatomy.nii.gz").is_file():
        maps.append((data / "anatomy" / "ircad_19_anatomy.nii.gz", "above liver"))
    for path, where in maps:
        anatomy = load_anatomy(discover_anatomy(path)[0], SPEC)
        spec = f"z[{np.nonzero((anatomy.labels == 1).any(axis=(0, 1)))[0].max() + 1}:]" if where else ""
        for phase in ("portal_venous", "unenhanced"):
            hu = synthesise(anatomy.structures, anatomy.depth_mm, SPEC.spacing_mm[0], np.random.default_rng(0), phase=phase, random_phase=0.0)
            ct, labels = Image(hu, anatomy.affine), Image(anatomy.labels, anatomy.affine)
            labelled = tuple(organ.name for organ in ORGANS if organ.label in anatomy.labelled)
            yield f"{anatomy.name} {phase[:8]} {spec}".strip(), crop(ct, spec), crop(labels, spec), labelled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("ABDOSEG_DATA", ROOT.parent / "shared" / "data")))
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    print(f"model {bundle.model_id}")
    print(f"{'scan':<22}{'organ':<14}{'in scan':>8}{'drawn':>7}{'confidence':>12}{'edge':>6}  decision")
    for name, ct, reference, labelled in cases(args.data if args.data.is_dir() else None):
        for line in rows(name, ct, reference, labelled, bundle):
            print(line, flush=True)
    for name, ct, reference, labelled in synthetic_cases(args.data if args.data.is_dir() else None):
        for line in rows(name, ct, reference, labelled, bundle):
            print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
