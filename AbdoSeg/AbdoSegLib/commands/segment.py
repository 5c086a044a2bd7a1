"""``abdoseg segment CT -o OUTDIR``: segment a CT and write labels, a Slicer segmentation and a summary.

Optionally, in the same run: surfaces of the organs found (``--surfaces stl``) and a picture (``--png``); the Slicer
segmentation can be left out (``--no-seg-nrrd``). File and stage names: ``AbdoSegLib.outputs``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import __version__
from ..analysis.ctcheck import check_ct
from ..analysis.qa import qa_report
from ..analysis.summary import organ_measurements
from ..inference.predict import segment
from ..inference.presence import FOUND
from ..io.atomic import atomic_directory, atomic_path, sigterm_as_interrupt
from ..io.image_files import read_image, write_image
from ..io.seg_nrrd import write_segmentation
from ..model.bundle import load_bundle
from ..outputs import DONE, LABELS_FILE, PICTURE, PREVIEW_FILE, READ, SEGMENTATION_FILE, SUMMARY_FILE, SURFACES, SURFACES_FOLDER, WRITE
from ..progress import make_progress
from ..resources import DEFAULT_BUNDLE
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
    timings: dict[str, float] = {}
    start = time.perf_counter()
    bundle = load_bundle(args.model)  # before SIGTERM is caught: a signal inside the weights' reader reads as damaged weights
    timings["load_model"] = time.perf_counter() - start
    with sigterm_as_interrupt(), atomic_directory(args.output, args.force, foreign=not_a_result, keep=[args.ct]) as staging:
        start = time.perf_counter()
        progress(READ, 0.0, f"reading {args.ct}")
        ct = read_image(args.ct)
        check_ct(ct, str(args.ct))
        timings["read"] = time.perf_counter() - start

        prediction = segment(ct, bundle, args.device, progress)
        timings.update(prediction.timings_s)

        start = time.perf_counter()
        progress(WRITE, 0.0, f"writing {args.output}")
        write_image(prediction.labels, staging / LABELS_FILE)
        if args.seg_nrrd:
            write_segmentation(prediction.labels, staging / SEGMENTATION_FILE)
        organs = organ_measurements(prediction.labels, ct)
        for name, decision in prediction.presence.items():
            organs[name].update(decision.summary())
        qa = qa_report(prediction.labels, ct, organs)
        timings["write"] = time.perf_counter() - start
        if args.surfaces and prediction.labels.array.any():  # no organ found: no surface, and the QA says why
            from ..surfaces.meshes import (
                export_surfaces,  # VTK loads only when surfaces are asked for
            )

            start = time.perf_counter()
            progress(SURFACES, 0.0, f"building {args.surfaces.upper()} surfaces")
            export_surfaces(prediction.labels, staging / SURFACES_FOLDER, args.surfaces, args.coordinates, args.merge)
            timings["surfaces"] = time.perf_counter() - start
        if args.png:
            # Imported only when asked: it loads VTK rendering (EGL), which the Slicer module's process need not.
            from ..surfaces.preview import render_preview

            start = time.perf_counter()
            progress(PICTURE, 0.0, "drawing the picture")
            render_preview(ct, prediction.labels, staging / PREVIEW_FILE)
            timings["picture"] = time.perf_counter() - start
        timings["total"] = sum(timings.values())
        summary = {
            "input": str(args.ct),
            "grid": {"shape": list(ct.shape), "spacing_mm": [round(float(s), 4) for s in ct.spacing]},
            "organs": organs,
            "qa": qa,
            "device": prediction.device,
            "model": {"id": bundle.model_id, "name": bundle.metadata.get("name"), "sha256": bundle.sha256, "path": str(bundle.path)},
            "timings_s": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            "abdoseg_version": __version__,
        }
        with atomic_path(staging / SUMMARY_FILE) as temporary:
            temporary.write_text(json.dumps(summary, indent=2) + "\n")
        progress(DONE, 1.0, f"wrote {args.output}")
    progress.close()
    if args.progress != "json":
        print_organs(organs, qa["warnings"], args.output)


def not_a_result(folder: Path) -> str | None:
    """Why ``folder`` is not an output folder of ``segment`` (a phrase), or None when it is: only the files
    ``segment`` writes, among them a summary with AbdoSeg's version."""
    ours = {LABELS_FILE, SEGMENTATION_FILE, SUMMARY_FILE, PREVIEW_FILE, SURFACES_FOLDER}
    others = sorted(entry.name for entry in folder.iterdir() if entry.name not in ours)
    if others:
        return f"holds files that abdoseg segment does not write ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})"
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict) or "abdoseg_version" not in summary:
        return f"has no {SUMMARY_FILE} written by abdoseg segment"
    return None


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
