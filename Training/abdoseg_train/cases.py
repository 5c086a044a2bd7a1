"""Training cases: a CT, its labelmap in AbdoSeg ids, and which organs are really labelled.

A case folder holds ``case.json`` ({"labelled": [organ names], ...}), the CT (``ct.nii.gz``,
``ct.nrrd`` or a ``dicom/`` series folder) and ``label.nii.gz``. In a partially labelled
case, 0 inside an organ that is not in ``labelled`` means "unknown", not background.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.organs import ORGAN_NAMES, organ_by_name

CT_NAMES = ("ct.nii.gz", "ct.nii", "ct.nrrd", "dicom")
LABEL_NAMES = ("label.nii.gz", "label.nii", "label.nrrd")


@dataclass(frozen=True)
class Case:
    """name: unique id; image, labels: paths; labelled: organ label ids really labelled."""

    name: str
    image: Path
    labels: Path
    labelled: tuple[int, ...]


def case_from_folder(folder: Path) -> Case:
    """Read one case folder (see module docstring)."""
    folder = Path(folder)
    info_path = folder / "case.json"
    if not info_path.is_file():
        raise AbdoSegError(f"case {folder} has no case.json.")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as error:
        raise AbdoSegError(f"case {folder}: case.json is not valid JSON ({error}).") from None
    labelled = info.get("labelled", list(ORGAN_NAMES))
    try:
        ids = tuple(sorted(organ_by_name(name).label for name in labelled))
    except KeyError as error:
        raise AbdoSegError(f"case {folder}: case.json names an unknown organ ({error.args[0]}).") from None
    image = _first_existing(folder, CT_NAMES, "CT")
    labels = _first_existing(folder, LABEL_NAMES, "label map")
    return Case(folder.name, image, labels, ids)


def discover_cases(root: Path) -> list[Case]:
    """Every case folder directly under ``root`` (or ``root`` itself if it is one)."""
    root = Path(root)
    if (root / "case.json").is_file():
        return [case_from_folder(root)]
    cases = [case_from_folder(folder) for folder in sorted(root.iterdir()) if (folder / "case.json").is_file()]
    if not cases:
        raise AbdoSegError(f"{root} holds no case folders (folders with a case.json).")
    return cases


def _first_existing(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).exists():
            return folder / name
    raise AbdoSegError(f"case {folder} has no {what} (looked for {', '.join(names)}).")
