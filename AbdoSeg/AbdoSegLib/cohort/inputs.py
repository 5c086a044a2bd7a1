"""Which cases a cohort holds, and their names.

A case is one CT: an image file or a folder of DICOM files. The inputs of ``abdoseg segment`` lead to cases so:

- an image file (``IMAGE_SUFFIXES``): one case, named after the file (``ct.nii.gz`` -> ``ct``);
- a list, ``.txt`` (one path per line; blank lines and lines starting with ``#`` ignored) or ``.csv`` (a header
  row with a ``path`` column, optionally a ``case`` column naming the case): one case per path, an image file or
  a DICOM series folder; a relative path is relative to the list's folder;
- a folder: each image file directly inside it is a case (not those deeper down: a case folder often holds
  label maps beside its CT, so give such CTs as arguments or in a list), and each folder of its tree, itself
  included, that holds DICOM files is one case: its series with the most files, the one ``abdoseg segment
  FOLDER`` reads. A series that is not CT (Modality), a localiser (ImageType LOCALIZER), a single image, or
  another series beside the largest in the same folder, is skipped with the reason. Hidden folders and the
  output root are not searched.

A DICOM case is named ``PatientID_StudyDate_sSeriesNumber`` from its first file's header (the folder's name
stands in for a missing PatientID). Names keep letters, digits, ``.``, ``_`` and ``-``; names that collide
(ignoring case) get their parent folder's name in front, then ``-2``, ``-3``... in input order.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import AbdoSegError
from .table import TABLE_FILES

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LIST_SUFFIXES = (".txt", ".csv")
LOCALIZER = "LOCALIZER"
_HEADER_TAGS = ["Modality", "ImageType", "SeriesInstanceUID", "PatientID", "StudyDate", "SeriesNumber", "SeriesDescription", "NumberOfFrames"]


@dataclass(frozen=True)
class Case:
    """One CT of a cohort. ``case_id`` names its folder under the output root; ``input`` is an absolute path (an
    image file or a DICOM series folder); ``skipped`` says why it is not segmented (a phrase), None when it is."""

    case_id: str
    input: Path
    skipped: str | None = None


@dataclass(frozen=True)
class Cohort:
    """The cases in input order; ``unlisted_images``: image files in subfolders of a folder input, not taken."""

    cases: list[Case]
    unlisted_images: int = 0


@dataclass(frozen=True)
class _Found:
    input: Path
    name: str
    parent: str
    skipped: str | None = None


def is_image_file(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def is_cohort(inputs: list[Path]) -> bool:
    """Whether ``abdoseg segment`` makes a cohort of ``inputs``: several of them, a .txt/.csv list, or a folder
    that holds image files or subfolders and no DICOM file itself (a folder of DICOM files is one series, as ever)."""
    if len(inputs) != 1:
        return True
    path = inputs[0]
    if path.is_file():
        return path.suffix.lower() in LIST_SUFFIXES
    if not path.is_dir():
        return False
    files, folders = _entries(path)
    if any(_is_dicom(file) for file in files if not is_image_file(file)):
        return False
    return bool(folders) or any(is_image_file(file) for file in files)


def find_cases(inputs: list[Path], output_root: Path) -> Cohort:
    """The cases of ``inputs`` (module docstring), named uniquely; nothing under ``output_root`` is taken.

    Raises AbdoSegError when a list cannot be read, or when no case at all is found.
    """
    output_root = Path(os.path.abspath(output_root))
    found: list[_Found] = []
    unlisted = 0
    for given in inputs:
        path = Path(os.path.abspath(given))
        if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            found += [_single(entry, name) for entry, name in _read_list(path)]
        elif path.is_dir():
            cases, images = _walk(path, output_root)
            found += cases
            unlisted += images
        else:  # an image file, or a missing path: its case fails with the reader's sentence
            found.append(_single(path))
    seen: set = set()
    unique = []
    for entry in found:  # a path given twice (or listed and found in a folder) is one case
        key = entry.input if entry.skipped is None else (entry.input, entry.name, entry.skipped)
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    if not unique:
        shown = ", ".join(str(p) for p in inputs[:3]) + (", ..." if len(inputs) > 3 else "")
        raise AbdoSegError(f"found no CT in {shown}: no image file ({', '.join(IMAGE_SUFFIXES)}) directly in it and no DICOM series in its tree.")
    ids = unique_ids([entry.name for entry in unique], [entry.parent for entry in unique])
    return Cohort([Case(case_id, entry.input, entry.skipped) for case_id, entry in zip(ids, unique)], unlisted)


def safe_name(name: str) -> str:
    """``name`` with only letters, digits, '.', '_' and '-' (others become '_'), not hidden, at most 100 characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:100]


def unique_ids(names: list[str], parents: list[str]) -> list[str]:
    """Folder names for ``names`` that differ from each other and from the table's files, ignoring case: a name
    shared by several gets its parent's name in front, and one still taken gets ``-2``, ``-3``..., in order."""
    safe = [safe_name(name) or "case" for name in names]
    counts = Counter(name.lower() for name in safe)
    safe = [f"{safe_name(parent)}_{name}" if counts[name.lower()] > 1 and safe_name(parent) else name for name, parent in zip(safe, parents)]
    wanted = {name.lower() for name in safe}
    used = {name.lower() for name in TABLE_FILES}
    ids = []
    for name in safe:
        candidate, number = name, 1
        while candidate.lower() in used or (candidate != name and candidate.lower() in wanted):
            number += 1
            candidate = f"{name}-{number}"
        used.add(candidate.lower())
        ids.append(candidate)
    return ids


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """The visible files and subfolders of ``folder``, sorted."""
    files, folders = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        (folders if entry.is_dir() else files).append(entry)
    return files, folders


def _is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _image_name(path: Path) -> str:
    """``ct.nii.gz`` -> ``ct``: the file name without its image suffix."""
    lower = path.name.lower()
    suffix = next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), path.suffix)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _single(path: Path, name: str | None = None) -> _Found:
    """One case from one path: an image file, a DICOM series folder (named from its header), or a missing path."""
    if name is None and path.is_dir():
        headers = _headers([file for file in _entries(path)[0] if _is_dicom(file)][:1])
        name = _series_name(headers[0][1], path) if headers else path.name
    return _Found(path, name or _image_name(path), path.parent.name)


def _read_list(path: Path) -> list[tuple[Path, str | None]]:
    """(absolute path, case name or None) of each entry of a .txt or .csv list."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise AbdoSegError(f"{path} is not a text list of paths (it is not UTF-8 text).") from None
    except OSError as error:
        raise AbdoSegError(f"cannot read the list {path} ({error.strerror}).") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
        if "path" not in columns:
            raise AbdoSegError(f"{path} has no 'path' column; a CSV list needs a header row naming a 'path' column (and optionally 'case').")
        rows = [((row.get(columns["path"]) or "").strip(), (row.get(columns.get("case", ""), "") or "").strip() or None) for row in reader]
    else:
        rows = [(line.strip(), None) for line in text.splitlines() if not line.strip().startswith("#")]
    entries = []
    for text_path, name in rows:
        if not text_path:
            continue
        entry = Path(text_path).expanduser()
        entries.append((Path(os.path.abspath(entry if entry.is_absolute() else path.parent / entry)), name))
    if not entries:
        raise AbdoSegError(f"the list {path} names no path.")
    return entries


def _walk(top: Path, output_root: Path) -> tuple[list[_Found], int]:
    """The cases in the folder tree ``top``, and the number of image files in its subfolders (not taken)."""
    found: list[_Found] = []
    unlisted = 0
    for folder, subfolders, files in os.walk(top):
        folder = Path(folder)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".") and not _within(folder / name, output_root))
        if _within(folder, output_root):
            continue
        paths = sorted(folder / name for name in files if not name.startswith("."))
        images = [path for path in paths if is_image_file(path)]
        if folder == top:
            found += [_Found(path, _image_name(path), folder.name) for path in images]
        else:
            unlisted += len(images)
        dicom = [path for path in paths if not is_image_file(path) and _is_dicom(path)]
        if dicom:
            found += _series_cases(folder, dicom)
    return found, unlisted


def _headers(files: list[Path]) -> list[tuple[Path, object]]:
    """(file, header without pixels) of each file whose header pydicom can read."""
    import pydicom  # only for DICOM folders
    from pydicom.errors import InvalidDicomError

    headers = []
    for file in files:
        try:
            headers.append((file, pydicom.dcmread(file, stop_before_pixels=True, specific_tags=_HEADER_TAGS)))
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError):
            continue
    return headers


def _series_cases(folder: Path, files: list[Path]) -> list[_Found]:
    """The case of a folder of DICOM files (its largest series) and its other series, skipped."""
    series: dict[str, list[tuple[Path, object]]] = {}
    for file, header in _headers(files):
        series.setdefault(str(header.get("SeriesInstanceUID", "") or ""), []).append((file, header))
    # The order in which the reader (io.dicom_series) chooses a folder's series: CT before other modalities and
    # localisers, then the most files.
    ordered = sorted(series.values(), key=lambda members: (_is_localizer(members[0][1]), _modality(members[0][1]) != "CT",
                                                           -len(members), members[0][0].name))
    found = []
    for index, members in enumerate(ordered):
        header = members[0][1]
        reason = _not_segmented(header, len(members))
        if reason is None and index > 0:
            reason = (f"another series in {folder} ({_describe(header, len(members))}) than the one AbdoSeg reads from that "
                      f"folder, its largest CT series; give this series a folder of its own to segment it")
        found.append(_Found(folder, _series_name(header, folder), folder.parent.name, reason))
    return found


def _not_segmented(header, files: int) -> str | None:
    """Why a series is no CT volume to segment (a phrase), or None."""
    if _modality(header) != "CT":
        return f"not a CT series (Modality {_modality(header) or 'missing'}, {_describe(header, files)})"
    if _is_localizer(header):
        return f"a localiser (ImageType {LOCALIZER}, {_describe(header, files)}), not a volume"
    if files == 1 and int(header.get("NumberOfFrames", 1) or 1) <= 1:
        return f"a single image, not a volume ({_describe(header, files)})"
    return None


def _modality(header) -> str:
    return str(header.get("Modality", "") or "").upper()


def _is_localizer(header) -> bool:
    image_type = header.get("ImageType", None) or []
    return any(LOCALIZER in str(value).upper() for value in ([image_type] if isinstance(image_type, str) else image_type))


def _describe(header, files: int) -> str:
    """'series 3 "Abdomen 1.0", 120 files'."""
    number = header.get("SeriesNumber", None)
    words = ["series", str(number) if number not in (None, "") else "", f'"{header.SeriesDescription}"' if header.get("SeriesDescription", "") else ""]
    return f"{' '.join(word for word in words if word)}, {files} file{'s' if files != 1 else ''}"


def _series_name(header, folder: Path) -> str:
    """``PatientID_StudyDate_sSeriesNumber`` (the folder's name for a missing PatientID; missing parts left out)."""
    number = header.get("SeriesNumber", None)
    parts = [str(header.get("PatientID", "") or "") or folder.name, str(header.get("StudyDate", "") or ""),
             f"s{number}" if number not in (None, "") else ""]
    return "_".join(part for part in parts if part)
