"""One case of a cohort: the same code in this process, in a local worker process and in a Ray actor.

``CaseWorker`` holds the model, loaded once per worker, and segments a case into ``ROOT/<case id>/`` with
``run_case.segment_case``; any failure becomes a row with one sentence, so that the cohort goes on.
``previous_result`` says whether a case's folder already holds a complete result of the same model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import AbdoSegError
from ..io.image_files import first_line
from ..model.bundle import ModelBundle, load_bundle
from ..outputs import DICOM_SEG_FILE, LABELS_FILE, PREVIEW_FILE, SEGMENTATION_FILE, SUMMARY_FILE, SURFACES_FOLDER
from ..progress import NoProgress
from ..run_case import CaseOptions, segment_case
from .inputs import Case
from .table import DONE, FAILED, Row, summary_row

Started = Callable[[Case], None]
"""Told that a case has started."""
Finished = Callable[[Row], None]
"""Given a case's final row."""
Recovered = Callable[[Case], Row | None]
"""The DONE row of a case whose worker stopped after its folder was in place, or None (``written_anyway``)."""


class CaseWorker:
    """Segments cases with one loaded model. ``model``: a bundle or its path (loaded here, on the CPU);
    ``threads``: torch and ITK threads of this process (None leaves them as they are)."""

    def __init__(self, model: ModelBundle | str | Path, options: CaseOptions, threads: int | None = None):
        if threads:
            import SimpleITK as sitk
            import torch

            torch.set_num_threads(threads)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        self.bundle = model if isinstance(model, ModelBundle) else load_bundle(model)
        self.options = options

    def model_sha256(self) -> str:
        return self.bundle.sha256

    def run(self, case: Case, root: Path) -> Row:
        """Segment ``case`` into ``root / case.case_id``; a row DONE with its summary's numbers, or FAILED with one
        sentence (an AbdoSegError's, or the type and first line of any other error). Ctrl-C is not caught."""
        start = time.perf_counter()
        try:
            summary = segment_case(case.input, root / case.case_id, self.bundle, self.options, NoProgress())
        except AbdoSegError as error:
            message = str(error)
        except MemoryError:
            message = f"not enough memory to segment {case.input}."
        except Exception as error:  # a case's failure, whatever it is, must not end the cohort
            message = f"unexpected {type(error).__name__} while segmenting {case.input}: {first_line(error)}."
        else:
            return summary_row(case.case_id, str(case.input), DONE, summary, time.perf_counter() - start)
        return failed_row(case, message, self.bundle, time.perf_counter() - start)


def failed_row(case: Case, message: str, bundle: ModelBundle, seconds: float | None = None) -> Row:
    return Row(case.case_id, str(case.input), FAILED, message, seconds=seconds, model_id=bundle.model_id, model_sha256=bundle.sha256)


def summary_stamp(folder: Path) -> tuple[int, int] | None:
    """(inode, modification time in ns) of a folder's summary.json, None without one: a new result brings a new file."""
    try:
        stat = (folder / SUMMARY_FILE).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def written_anyway(case: Case, root: Path, bundle: ModelBundle, options: CaseOptions, stamp_before: tuple[int, int] | None) -> Row | None:
    """A DONE row for a case whose worker was stopped or died after the case's new folder was in place (it is
    renamed into place last), or None. ``stamp_before``: ``summary_stamp`` of the folder before the case ran."""
    folder = root / case.case_id
    stamp = summary_stamp(folder)
    summary = previous_result(folder, case, bundle, options)[0] if stamp is not None and stamp != stamp_before else None
    return None if summary is None else summary_row(case.case_id, str(case.input), DONE, summary, summary.get("timings_s", {}).get("total"))


def previous_result(folder: Path, case: Case, bundle: ModelBundle, options: CaseOptions) -> tuple[dict | None, str | None]:
    """(summary, None) when ``folder`` holds a complete result of ``case`` by this model with the files ``options``
    ask for; (None, why not: a phrase) when it holds another result; (None, None) when there is none to read."""
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(summary, dict) or not {"organs", "qa", "model", "input"} <= set(summary):
        return None, None
    model = summary["model"]
    if model.get("sha256") != bundle.sha256:
        return None, f"a result of another model ({model.get('id')})"
    if summary["input"] != str(case.input):
        return None, f"the result of another input ({summary['input']})"
    missing = [name for name in _expected_files(summary, options) if not (folder / name).exists()]
    if options.surfaces and SURFACES_FOLDER not in missing and (folder / SURFACES_FOLDER).is_dir():
        suffix = f"_{options.coordinates.upper()}.{options.surfaces}"
        if not any(path.name.endswith(suffix) for path in (folder / SURFACES_FOLDER).iterdir()):
            missing.append(f"{SURFACES_FOLDER}/*{suffix}")
    if missing:
        return None, f"a result without {', '.join(missing)}"
    return summary, None


def _expected_files(summary: dict, options: CaseOptions) -> list[str]:
    """The files a result for ``options`` holds (surfaces and DICOM SEG only where an organ was drawn)."""
    names = [LABELS_FILE]
    if options.seg_nrrd:
        names.append(SEGMENTATION_FILE)
    if options.png:
        names.append(PREVIEW_FILE)
    drawn = any(organ.get("voxels") for organ in summary["organs"].values())
    if options.surfaces and drawn:
        names.append(SURFACES_FOLDER)
    if options.dicom_seg and drawn:
        names.append(DICOM_SEG_FILE)
    return names
