"""``abdoseg segment CT -o OUTDIR``: segment a CT and write labels, a Slicer segmentation and a summary.

Optionally, in the same run: surfaces of the organs found (``--surfaces stl``) and a picture (``--png``); the Slicer
segmentation can be left out (``--no-seg-nrrd``). File and stage names: ``AbdoSegLib.outputs``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inference.presence import FOUND
from ..io.atomic import sigterm_as_interrupt
from ..model.bundle import load_bundle
from ..outputs import PREVIEW_FILE, SEGMENTATION_FILE
from ..progress import make_progress
from ..resources import DEFAULT_BUNDLE
from ..run_case import CaseOptions, segment_case
from ..surfaces.options import FORMATS
from .export import add_coordinate_options


def register(commands: argparse._SubParsersAction) -> None:
    seg = commands.add_parser("segment", help="segment a CT (NIfTI, NRRD or a DICOM series folder)")
    seg.add_argument("ct", type=Path, help="CT file or DICOM series folder")
    seg.add_argument("-o", "--output", type=Path, required=True, help="output folder (created; must not exist unless --force)")
    seg.add_argument("--model", type=Path, default=DEFAULT_BUNDLE, help="model bundle (default: the bundled model)")
    seg.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    seg.add_argument("--progress", choices=["auto", "bar", "json", "none"], default="auto",
                     help="a bar on a terminal (auto), JSON lines for programs (json), or nothing")
    seg.add_argument("--surfaces", choices=FORMATS, help="also write organ surfaces in this format into OUTDIR/surfaces/")
    add_coordinate_options(seg)
    seg.add_argument("--merge", action="store_true", help="all organs in one surface file")
    seg.add_argument("--png", action="store_true", help=f"also write a picture of the result ({PREVIEW_FILE})")
    seg.add_argument("--no-seg-nrrd", dest="seg_nrrd", action="store_false",
                     help=f"do not write {SEGMENTATION_FILE} (for programs that build their own segmentation from the labels)")
    seg.add_argument("--force", action="store_true", help="replace an existing output folder of a previous segment run (never other files)")
    seg.set_defaults(run=run_segment)


def run_segment(args: argparse.Namespace) -> None:
    progress = make_progress(args.progress)
    bundle = load_bundle(args.model)  # before SIGTERM is caught: a signal inside the weights' reader reads as damaged weights
    options = CaseOptions(args.device, args.surfaces, args.coordinates, args.merge, args.png, args.seg_nrrd, args.force)
    with sigterm_as_interrupt():
        summary = segment_case(args.ct, args.output, bundle, options, progress)
    progress.close()
    if args.progress != "json":
        print_organs(summary["organs"], summary["qa"]["warnings"], args.output)


def print_organs(organs: dict[str, dict], warnings: list[str], output: Path) -> None:
    """A table of the summary's organs (volume, mean HU, confidence, or "not found"), then the QA warnings."""
    print(f"{'organ':<14}{'volume (mL)':>12}{'mean HU':>10}{'confidence':>12}")
    for name, values in organs.items():
        if values["status"] != FOUND or not values["voxels"]:
            print(f"{name:<14}{'not found':>12}")
            continue
        print(f"{name:<14}{values['volume_ml']:>12.1f}{values['mean_hu']:>10.0f}{values['confidence']:>12.2f}")
    for warning in warnings:
        print(f"QA warning: {warning}")
    print(f"results in {output}")
