"""Print what a bundle draws on the organ-free slabs of labelled scans: above and below all four organs.

    python Training/scripts/organ_free_slabs.py [--model BUNDLE] CASE_FOLDER...

A case folder holds ``ct.nii.gz`` and ``label.nii.gz`` on one grid in RAS order, as ``abdoseg-train synth``
writes them. Each scan's slab below the lowest and above the highest labelled voxel of the four organs, each
``CLEAR_MM`` away from them and at least ``MIN_SLAB_MM`` thick, is segmented by ``inference.predict.segment``:
per organ that the network drew there, its volume before the not-found decision (mL, model grid), its
confidence and the decision. Every organ is absent from these slabs, so every "found" is a false organ.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from presence_table import crop

from AbdoSegLib.image import Image
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.bundle import load_bundle
from AbdoSegLib.organs import ORGANS
from AbdoSegLib.resources import DEFAULT_BUNDLE

CLEAR_MM = 15.0  # between a slab and the nearest organ voxel
MIN_SLAB_MM = 45.0  # thinner slabs are skipped


def slabs(ct: Image, reference: Image) -> dict[str, Image]:
    """The slabs of ``ct`` (RAS) below and above the four organs of ``reference`` (same grid), by name."""
    if ct.affine[2, 2] <= 0:
        raise SystemExit("a case must be in RAS voxel order, its third axis rising toward the head, as abdoseg-train synth writes it.")
    levels = np.flatnonzero(np.isin(reference.array, [organ.label for organ in ORGANS]).any(axis=(0, 1)))
    slice_mm = float(ct.spacing[2])
    clear = int(np.ceil(CLEAR_MM / slice_mm))
    found = {}
    for name, start, stop in (("below", 0, levels[0] - clear), ("above", levels[-1] + 1 + clear, ct.array.shape[2])):
        if (stop - start) * slice_mm >= MIN_SLAB_MM:
            found[name] = crop(ct, f"z[{start}:{stop}]")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("cases", type=Path, nargs="+")
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    print(f"model {bundle.model_id}")
    print("| case | slab | organ | drawn (mL) | confidence | decision |\n|---|---|---|---|---|---|")
    for folder in args.cases:
        for name, slab in slabs(read_image(folder / "ct.nii.gz"), read_image(folder / "label.nii.gz")).items():
            thick = f"{name} {slab.array.shape[2] * slab.spacing[2]:.0f} mm"
            for organ, decision in segment(slab, bundle, "cpu").presence.items():
                if decision.volume_ml:
                    print(f"| {folder.parent.name}/{folder.name} | {thick} | {organ} | {decision.volume_ml:.0f} | "
                          f"{decision.confidence:.3f} | {decision.status} |", flush=True)


if __name__ == "__main__":
    main()
