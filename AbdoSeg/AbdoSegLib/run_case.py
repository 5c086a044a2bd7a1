"""One case, start to finish: read a CT, segment it and write its output folder atomically.

``abdoseg segment`` calls it once per input; a cohort calls it once per case with the model loaded
once. The folder's files are named in ``outputs``; ``summary.json`` is the record of the case.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .analysis.ctcheck import check_ct
from .analysis.qa import qa_report
from .analysis.summary import organ_measurements
from .inference.predict import segment
from .io.atomic import atomic_directory, atomic_path, foreign_entries, lacks_record
from .io.dicom_seg import dicom_seg_sources, write_dicom_seg
from .io.image_files import read_image, write_image
from .io.seg_nrrd import write_segmentation
from .model.bundle import ModelBundle
from .outputs import DICOM_SEG_FILE, DONE, LABELS_FILE, PICTURE, PREVIEW_FILE, READ, SEGMENTATION_FILE, SUMMARY_FILE, SURFACES, SURFACES_FOLDER, WRITE
from .progress import Progress
from .surfaces.options import DEFAULT_COORDINATES


@dataclass(frozen=True)
class CaseOptions:
    """What to write besides the labels and the summary, and where to compute.

    ``surfaces`` is a surface format (``surfaces.options.FORMATS``) or None; ``coordinates`` and ``merge``
    as in ``abdoseg export``; ``force`` replaces a previous output folder of ``segment`` (never other files);
    ``dicom_seg`` writes a DICOM SEG of the organs found, for a DICOM series input (``io.dicom_seg``).
    """

    device: str = "auto"
    surfaces: str | None = None
    coordinates: str = DEFAULT_COORDINATES
    merge: bool = False
    png: bool = False
    seg_nrrd: bool = True
    force: bool = False
    dicom_seg: bool = False


def segment_case(ct_path: Path, output: Path, bundle: ModelBundle, options: CaseOptions, progress: Progress) -> dict:
    """Segment ``ct_path`` (a file or a DICOM series folder) into the folder ``output``; returns the summary.

    The folder appears complete or not at all (``io.atomic.atomic_directory``). Raises AbdoSegError with one
    sentence for an input the engine cannot use or an output it may not replace.
    """
    timings: dict[str, float] = {}
    dicom_sources = dicom_seg_sources(ct_path) if options.dicom_seg else None  # refused before any work
    with atomic_directory(output, options.force, foreign=not_a_result, keep=[ct_path]) as staging:
        start = time.perf_counter()
        progress(READ, 0.0, f"reading {ct_path}")
        assumptions: list[str] = []  # what the reader chose or assumed: said on stderr and kept in the summary
        ct = read_image(ct_path, assumptions)
        for sentence in assumptions:
            print(f"note: {sentence}", file=sys.stderr)
        check_ct(ct, str(ct_path))
        timings["read"] = time.perf_counter() - start

        prediction = segment(ct, bundle, options.device, progress)
        timings.update(prediction.timings_s)

        start = time.perf_counter()
        progress(WRITE, 0.0, f"writing {output}")
        write_image(prediction.labels, staging / LABELS_FILE)
        if options.seg_nrrd:
            write_segmentation(prediction.labels, staging / SEGMENTATION_FILE)
        if dicom_sources and prediction.labels.array.any():
            write_dicom_seg(prediction.labels, dicom_sources, staging / DICOM_SEG_FILE, bundle.model_id)
        elif dicom_sources:
            print(f"note: no organ found in {ct_path}, so no {DICOM_SEG_FILE}: a DICOM SEG needs at least one segment.", file=sys.stderr)
        organs = organ_measurements(prediction.labels, ct)
        for name, decision in prediction.presence.items():
            organs[name].update(decision.summary())
        qa = qa_report(prediction.labels, ct, organs, prediction.mirror.summary())
        timings["write"] = time.perf_counter() - start
        if options.surfaces and prediction.labels.array.any():  # no organ found: no surface, and the QA says why
            from .surfaces.meshes import export_surfaces  # VTK loads only when surfaces are asked for

            start = time.perf_counter()
            progress(SURFACES, 0.0, f"building {options.surfaces.upper()} surfaces")
            export_surfaces(prediction.labels, staging / SURFACES_FOLDER, options.surfaces, options.coordinates, options.merge)
            timings["surfaces"] = time.perf_counter() - start
        if options.png:
            # Imported only when asked: it loads VTK rendering (EGL), which the Slicer module's process need not.
            from .surfaces.preview import render_preview

            start = time.perf_counter()
            progress(PICTURE, 0.0, "drawing the picture")
            render_preview(ct, prediction.labels, staging / PREVIEW_FILE)
            timings["picture"] = time.perf_counter() - start
        timings["total"] = sum(timings.values())
        summary = {
            "input": str(ct_path),
            "grid": {"shape": list(ct.shape), "spacing_mm": [round(float(s), 4) for s in ct.spacing]},
            "assumptions": assumptions,
            "organs": organs,
            "qa": qa,
            "device": prediction.device,
            "model": {"id": bundle.model_id, "name": bundle.metadata.get("name"), "sha256": bundle.sha256, "path": str(bundle.path)},
            "timings_s": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            "abdoseg_version": __version__,
        }
        with atomic_path(staging / SUMMARY_FILE) as temporary:
            temporary.write_text(json.dumps(summary, indent=2) + "\n")
        progress(DONE, 1.0, f"wrote {output}")
    return summary


def not_a_result(folder: Path) -> str | None:
    """Why ``folder`` is not an output folder of ``segment`` (a phrase), or None when it is: only the files
    ``segment`` writes, among them a summary with AbdoSeg's version."""
    ours = {LABELS_FILE, SEGMENTATION_FILE, DICOM_SEG_FILE, SUMMARY_FILE, PREVIEW_FILE, SURFACES_FOLDER}
    return foreign_entries(folder, lambda entry: entry.name in ours, "abdoseg segment") or \
        lacks_record(folder / SUMMARY_FILE, "abdoseg_version", "abdoseg segment")
