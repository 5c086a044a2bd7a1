"""The cohort's table: one row per case, written as ``cohort.csv`` and ``cohort.json`` in the output root.

cohort.csv columns (``COLUMNS``): case, input, status (done, failed, skipped), message (a failure's sentence, or
why the case was skipped), per organ ``<organ>_volume_ml`` (mL), ``<organ>_mean_hu`` and ``<organ>_confidence``
(0-1; both empty for an organ not found), qa_warnings (joined by " | "), seconds (the case's wall time; for a case
done by an earlier run, its recorded total), model_id, model_sha256. cohort.json holds the same rows with each
organ's summary entry (status, reason, voxels) and the warnings as a list, and the counts per status.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import AbdoSegError
from ..io.atomic import atomic_path
from ..organs import ORGANS

DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"
CSV_FILE = "cohort.csv"
JSON_FILE = "cohort.json"
TABLE_FILES = (CSV_FILE, JSON_FILE)
ORGAN_FIELDS = ("volume_ml", "mean_hu", "confidence")
COLUMNS = ["case", "input", "status", "message", *[f"{organ.name}_{name}" for organ in ORGANS for name in ORGAN_FIELDS],
           "qa_warnings", "seconds", "model_id", "model_sha256"]
WARNING_SEPARATOR = " | "


@dataclass
class Row:
    """One case of the table; ``organs`` and ``qa_warnings`` as in its ``summary.json`` (empty when it failed)."""

    case: str
    input: str
    status: str
    message: str = ""
    organs: dict[str, dict] = field(default_factory=dict)
    qa_warnings: list[str] = field(default_factory=list)
    seconds: float | None = None
    model_id: str = ""
    model_sha256: str = ""

    def csv_values(self) -> list:
        organ_values = [self.organs.get(organ.name, {}).get(name) for organ in ORGANS for name in ORGAN_FIELDS]
        seconds = None if self.seconds is None else round(self.seconds, 2)
        return [self.case, self.input, self.status, self.message, *organ_values, WARNING_SEPARATOR.join(self.qa_warnings),
                seconds, self.model_id, self.model_sha256]


def summary_row(case: str, input_path: str, status: str, summary: dict, seconds: float | None, message: str = "") -> Row:
    """The row of a case segmented now (``DONE``) or earlier (``SKIPPED``), from its summary."""
    return Row(case, input_path, status, message, summary["organs"], list(summary["qa"]["warnings"]), seconds,
               summary["model"]["id"], summary["model"]["sha256"])


def check_table_files(root: Path) -> None:
    """Refuse an output root whose ``cohort.csv`` or ``cohort.json`` was not written by a cohort run (never replaced)."""
    for name in TABLE_FILES:
        path = root / name
        if not path.exists():
            continue
        try:
            text = path.read_text(errors="replace")
            ours = (text.startswith(",".join(COLUMNS[:3])) if name == CSV_FILE
                    else isinstance(data := json.loads(text), dict) and "abdoseg_version" in data)
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise AbdoSegError(f"{path} exists and was not written by abdoseg segment; choose another output folder for the cohort.")


def write_table(rows: list[Row], root: Path) -> None:
    """Write ``cohort.csv`` and ``cohort.json`` in ``root``, each atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(["" if value is None else value for value in row.csv_values()] for row in rows)
    with atomic_path(root / CSV_FILE) as temporary:
        temporary.write_text(text.getvalue())
    document = {"abdoseg_version": __version__, "counts": counts(rows), "cases": [asdict(row) for row in rows]}
    with atomic_path(root / JSON_FILE) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")


def counts(rows: list[Row]) -> dict[str, int]:
    """{done, failed, skipped: number of rows}."""
    found = Counter(row.status for row in rows)
    return {status: found[status] for status in (DONE, FAILED, SKIPPED)}
