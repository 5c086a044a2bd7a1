"""Print the table that the mirrored-header check (``AbdoSegLib.inference.mirror_check``) was measured on.

    python Training/scripts/mirror_table.py [--model BUNDLE] [--data SHARED_DATA]

Each row is a scan or a crop of one (crops as in ``presence_table.py``), segmented with the mirrored pass
forced on: the liver's confidence as given | mirrored (in brackets: not found), the mirrored liver's
volume (mL on the model grid) and whether the check warns. 3D-IRCADb-01 patient 17 runs when ``--data`` holds it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from presence_table import TEST_DATA, crop

from AbdoSegLib.inference import mirror_check
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.inference.presence import OrganPresence
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.bundle import load_bundle
from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CT

SAMPLE_CROPS = ["", "z[95:]", "z[100:]", "y[:45]", "x[62:]", "x[:60]", "x[85:]", "z[30:90]", "z[60:95]", "z[:60]", "z[:66]", "z[:80]"]


def shown(decision: OrganPresence | None) -> str:
    if decision is None or decision.confidence is None:
        return "-"
    return f"{decision.confidence:.3f}" if decision.found else f"({decision.confidence:.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--data", type=Path, default=Path(os.environ["ABDOSEG_DATA"]) if "ABDOSEG_DATA" in os.environ else None)
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    mirror_check.needs_mirrored_pass = lambda presence: True  # measure every scan, convincing or not
    sample = read_image(SAMPLE_CT)
    scans = [(f"sample {spec}".strip(), lambda spec=spec: crop(sample, spec)) for spec in SAMPLE_CROPS]
    scans += [("ts_dicom", lambda: read_image(TEST_DATA / "ts_dicom" / "dicom")),
              ("msd_spleen_8", lambda: read_image(TEST_DATA / "msd_spleen_8" / "ct.nii.gz"))]
    if args.data and (args.data / "ircad_17").is_dir():
        scans.append(("ircad_17", lambda: read_image(args.data / "ircad_17" / "ct.nii.gz")))
    print(f"model {bundle.model_id}")
    print(f"{'scan':<18} {'as given | mirrored':<22}{'mirrored liver mL':>18}  warns")
    for name, load in scans:
        check = segment(load(), bundle, "cpu").mirror
        print(f"{name:<18} {shown(check.as_given) + ' | ' + shown(check.mirrored):<22}{check.mirrored.volume_ml:>18.0f}  "
              f"{'yes' if check.header_may_be_mirrored else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
