"""``abdoseg segment CT -o OUTDIR``: segment a CT and write labels, a Slicer segmentation and a summary.

Optionally, in the same run: surfaces of the organs found (``--surfaces stl``) and a picture (``--png``); the Slicer
segmentation can be left out (``--no-seg-nrrd``). File and stage names: ``AbdoSegLib.outputs``.

Several inputs, a .txt/.csv list, or a folder of image files or of DICOM series folders make a cohort
(``AbdoSegLib.cohort``): one folder per case under OUTDIR and a table ``OUTDIR/cohort.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cohort.inputs import is_cohort
from ..cohort.runner import segment_cohort
from ..inference.presence import FOUND
from ..io.atomic import sigterm_as_interrupt
from ..io.dicom_seg import require_dicom_seg
from ..model.bundle import load_bundle
from ..outputs import DICOM_SEG_FILE, PREVIEW_FILE, SEGMENTATION_FILE
from ..progress import make_progress
from ..resources import DEFAULT_BUNDLE
from ..run_case import CaseOptions, segment_case
from ..surfaces.options import FORMATS
from .export import add_coordinate_options


def register(commands: argparse._SubParsersAction) -> None:
    seg = commands.add_parser("segment", help="segment a CT (NIfTI, NRRD or a DICOM series folder), or a cohort of them",
                              epilog=COHORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    seg.add_argument("ct", type=Path, nargs="+", help="CT file or DICOM series folder; several, a folder of them or a .txt/.csv list: a cohort")
    seg.add_argument("-o", "--output", type=Path, required=True,
                     help="output folder (created; must not exist unless --force); for a cohort, the folder of its case folders")
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
    seg.add_argument("--dicom-seg", action="store_true",
                     help=f"also write {DICOM_SEG_FILE}, a DICOM SEG of the organs found that refers to the input DICOM series "
                          f"(needs pip install abdoseg[dicom])")
    seg.add_argument("--force", action="store_true", help="replace an existing output folder of a previous segment run (never other files)")
    seg.add_argument("--workers", type=_positive, metavar="N",
                     help="cohort: N worker processes, the CPU threads shared between them, one GPU each where there are several "
                          "(default 1); with --ray, N actors (default one per GPU, or per 4 CPUs)")
    seg.add_argument("--ray", metavar="ADDRESS", help="cohort: run on a Ray cluster: auto (the one 'ray start' runs here) or HOST:PORT "
                                                     "(needs pip install abdoseg[cluster])")
    seg.set_defaults(run=run_segment)


COHORT_HELP = """cohorts:
  Several CTs, a .txt list (one path a line) or .csv list (a 'path' column, optionally 'case'), or a folder make a
  cohort: each case goes to OUTDIR/<case>/ and OUTDIR/cohort.csv (and .json) lists every case with its status (done,
  failed, skipped), a failure's reason, organ volumes, mean HU, confidence and QA warnings. A folder's cases are the
  image files directly in it and, in its whole tree, each folder of DICOM files: its largest CT series (the one
  this command reads from a single folder), named PatientID_StudyDate_sSeriesNumber; other series in that folder,
  non-CT series and localisers are skipped and listed. A single folder that itself holds DICOM files is one case, as
  ever. A case already segmented with the same model is skipped (--force segments it again); a failed case does
  not stop the others, and the exit code is 1 when any failed."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def run_segment(args: argparse.Namespace) -> None:
    if args.dicom_seg and not is_cohort(args.ct):
        require_dicom_seg(args.ct[0])  # before the model loads
    bundle = load_bundle(args.model)  # before SIGTERM is caught: a signal inside the weights' reader reads as damaged weights
    options = CaseOptions(args.device, args.surfaces, args.coordinates, args.merge, args.png, args.seg_nrrd, args.force, args.dicom_seg)
    if is_cohort(args.ct):
        with sigterm_as_interrupt():
            segment_cohort(args.ct, args.output, bundle, options, args.workers, args.ray, args.progress)
        return
    if args.workers or args.ray:
        print("note: one CT given: --workers and --ray are for cohorts and go unused.", file=sys.stderr)
    progress = make_progress(args.progress)
    with sigterm_as_interrupt():
        summary = segment_case(args.ct[0], args.output, bundle, options, progress)
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
