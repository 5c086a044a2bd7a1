"""A DICOM folder as one volume: which series, which files in which order, and on which grid.

GDCM (through SimpleITK) decodes the pixels; the choices that ITK's series reader would make
without a word are made here, in the open, from the headers alone (pydicom, pixel data not read):

- several series in the folder: the CT series with the most slices (localizers and single
  slices last) is used, and a note names it and lists the others;
- one series with several acquisitions at the same slice positions: the acquisition with the
  most slices is used, and a note says so;
- refused with one sentence: slices without a position, orientation or pixel spacing; slices of
  different orientations, sizes or pixel spacings; positions that cannot be told apart; slices
  not stacked along the normal of their planes (gantry tilt: ITK would drop the shear); a missing
  slice or an uneven spacing (ITK would spread the slices evenly); a damaged file.

The grid is the one ITK builds from the files in the order returned: the first slice's position,
the rows' and columns' directions, the pixel spacing, and the distance from the first to the last
slice divided by the number of gaps. A multi-frame file (enhanced CT) is one candidate series of
its own; its frames keep their order in the file, as ITK reads them.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from ..errors import AbdoSegError

logging.getLogger("pydicom").setLevel(logging.ERROR)  # pydicom logs damaged elements before it raises or we refuse

ORIENTATION_TOLERANCE = 1e-4
"""Largest error of a slice's direction cosines (not unit, not perpendicular) and largest difference between two slices'
(1e-4: 0.05 mm across a 500 mm field; scanners write them with 6 digits or more)."""
MIN_POSITION_TOLERANCE_MM = 0.01
"""A slice may lie this far, or 1 % of the slice spacing if more, from the regular grid (Slicer warns above 0.01 mm)."""


@dataclass(frozen=True)
class Slice:
    """The header of one slice (a frame of a multi-frame file has its own). Positions and cosines in LPS."""

    path: Path
    series: str
    description: str
    modality: str
    localizer: bool
    acquisition: str
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    size: tuple[int, int]
    multiframe: bool
    gantry_tilt: float | None


@dataclass(frozen=True)
class Series:
    """The files ITK reads, in order, and the grid it must build from them.

    files: the files in slice order (one multi-frame file, or one file per slice).
    shape: (columns, rows, slices), the Image's (I, J, K).
    affine: (4, 4) voxel-to-world in LPS mm.
    """

    files: list[Path]
    shape: tuple[int, int, int]
    affine: np.ndarray


def read_series_headers(folder: Path, notes: list[str]) -> Series | None:
    """The series of ``folder`` that AbdoSeg reads, checked; None when the folder holds no DICOM image.

    Appends to ``notes`` a sentence for each choice made (series, acquisition, ignored files). Raises
    AbdoSegError with one sentence when the series cannot be one regular volume (see the module's docstring).
    """
    slices, ignored = _scan(folder)
    if not slices:
        return None
    candidates: dict[tuple[str, str], list[Slice]] = {}
    for one in slices:
        candidates.setdefault(("file", str(one.path)) if one.multiframe else ("series", one.series), []).append(one)
    ranked = sorted(candidates.values(), key=lambda group: (not group[0].localizer, group[0].modality == "CT", len(group)), reverse=True)
    if len(ranked) > 1:
        notes.append(f"{folder} holds {len(ranked)} series; used {_describe(ranked[0])}; others: {_listing([_describe(g) for g in ranked[1:]])}.")
    if ignored:
        notes.append(f"{folder}: ignored {len(ignored)} file(s) that are not DICOM images ({_listing(sorted(p.name for p in ignored))}).")
    chosen = ranked[0]
    _check_complete(chosen)
    _check_same_plane_geometry(folder, chosen)
    if not chosen[0].multiframe:
        chosen = _one_acquisition(folder, chosen, notes)
    return _stack(folder, chosen)


def dicom_series_files(folder: Path) -> list[Path]:
    """The files of the series that ``read_image(folder)`` reads, in slice order."""
    series = read_series_headers(Path(folder), [])
    if series is None:
        raise AbdoSegError(f"{folder} is a folder without a DICOM image series.")
    return series.files


def _scan(folder: Path) -> tuple[list[Slice], list[Path]]:
    """The image slices of ``folder``'s files (not its subfolders), and the files that are not DICOM images."""
    slices, ignored = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            with open(path, "rb") as file, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns about odd values it then reads anyway
                header = pydicom.dcmread(file, stop_before_pixels=True)
                ends_early = file.tell() == os.fstat(file.fileno()).st_size  # stopped at the end, not before pixel data
        except InvalidDicomError:
            ignored.append(path)
            continue
        except Exception as error:  # pydicom meets damaged bytes with many exception types
            raise AbdoSegError(f"{path} is a damaged DICOM file ({type(error).__name__}: {str(error)[:120]}); copy the series again.") from None
        image = bool(header.get("Rows") and header.get("Columns"))
        if (image or "Image Storage" in UID(header.file_meta.get("MediaStorageSOPClassUID", "")).name) and (ends_early or not image):
            raise AbdoSegError(f"{path} is a DICOM image file that ends before its pixel data (truncated); copy the series again.")
        if not image:
            ignored.append(path)  # DICOMDIR, structured reports, presentation states
            continue
        slices.extend(_slices(path, header))
    return slices, ignored


def _slices(path: Path, header: pydicom.Dataset) -> list[Slice]:
    common = dict(
        path=path, series=_text(header, "SeriesInstanceUID"), description=_text(header, "SeriesDescription"), modality=_text(header, "Modality"),
        localizer="LOCALIZER" in _text(header, "ImageType").upper().split("\\"), acquisition=_text(header, "AcquisitionNumber"),
        size=(int(header.Rows), int(header.Columns)), gantry_tilt=_number(header, "GantryDetectorTilt"),
    )
    frames = int(header.get("NumberOfFrames") or 1)
    if frames == 1:
        return [Slice(**common, position=_numbers(header, "ImagePositionPatient", 3), orientation=_numbers(header, "ImageOrientationPatient", 6),
                      pixel_spacing=_pair(_numbers(header, "PixelSpacing", 2)), multiframe=False)]
    shared = (header.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or [None] * frames
    return [Slice(**common, position=_functional(item, shared, "PlanePositionSequence", "ImagePositionPatient", 3),
                  orientation=_functional(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient", 6),
                  pixel_spacing=_pair(_functional(item, shared, "PixelMeasuresSequence", "PixelSpacing", 2)), multiframe=True)
            for item in per_frame]


def _numbers(dataset: pydicom.Dataset | None, keyword: str, count: int) -> np.ndarray | None:
    """The ``count`` numbers of a multi-valued attribute, or None when absent or malformed."""
    try:
        values = np.array([float(v) for v in dataset.get(keyword)], dtype=np.float64)
    except (TypeError, ValueError, AttributeError):
        return None
    return values if values.shape == (count,) and np.isfinite(values).all() else None


def _text(dataset: pydicom.Dataset, keyword: str) -> str:
    """An attribute as DICOM writes it (values joined by backslashes), or "" when absent or empty."""
    element = dataset.get(keyword)
    if element is None:
        return ""
    return "\\".join(str(v) for v in element) if isinstance(element, MultiValue) else str(element)


def _number(dataset: pydicom.Dataset, keyword: str) -> float | None:
    try:
        return float(dataset.get(keyword))
    except (TypeError, ValueError):
        return None


def _functional(frame: pydicom.Dataset | None, shared: pydicom.Dataset | None, sequence: str, keyword: str, count: int) -> np.ndarray | None:
    """A multi-frame attribute: from the frame's functional group, else from the shared one."""
    for group in (frame, shared):
        items = group.get(sequence) if group is not None else None
        if items:
            return _numbers(items[0], keyword, count)
    return None


def _pair(values: np.ndarray | None) -> tuple[float, float] | None:
    return None if values is None else (float(values[0]), float(values[1]))


def _check_complete(slices: list[Slice]) -> None:
    for one in slices:
        for name, value in (("ImagePositionPatient", one.position), ("ImageOrientationPatient", one.orientation), ("PixelSpacing", one.pixel_spacing)):
            if value is None:
                raise AbdoSegError(f"{one.path} has no valid {name}, so its pixels have no place in space; AbdoSeg does not invent one.")
        if min(one.pixel_spacing) <= 0:
            raise AbdoSegError(f"{one.path} has a PixelSpacing of {one.pixel_spacing[0]:g} x {one.pixel_spacing[1]:g} mm; a positive size is needed.")
        row, column = one.orientation[:3], one.orientation[3:]
        if max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(column) - 1), abs(row @ column)) > ORIENTATION_TOLERANCE:
            raise AbdoSegError(f"{one.path} has {_cosines(one)}, which is not two perpendicular unit directions, so its pixels have no certain place.")


def _check_same_plane_geometry(folder: Path, slices: list[Slice]) -> None:
    first = slices[0]
    for one in slices[1:]:
        if np.abs(one.orientation - first.orientation).max() > ORIENTATION_TOLERANCE:
            raise AbdoSegError(
                f"{folder}: its slices have different orientations ({first.path.name}: {_cosines(first)}; {one.path.name}: {_cosines(one)}), "
                f"so they do not form one volume."
            )
        if one.size != first.size or np.abs(np.subtract(one.pixel_spacing, first.pixel_spacing)).max() > 1e-4:
            raise AbdoSegError(
                f"{folder}: its slices differ in size or pixel spacing ({first.path.name}: {_plane(first)}; {one.path.name}: {_plane(one)}), "
                f"so they do not form one volume."
            )


def _one_acquisition(folder: Path, slices: list[Slice], notes: list[str]) -> list[Slice]:
    """The slices of one acquisition when several share the slice positions; all of them otherwise."""
    depth = _depths(slices)
    order = np.argsort(depth, kind="stable")
    repeated = [(slices[a], slices[b]) for a, b in zip(order[:-1], order[1:]) if depth[b] - depth[a] < MIN_POSITION_TOLERANCE_MM]
    if not repeated:
        return slices
    groups: dict[str, list[Slice]] = {}
    for one in slices:
        groups.setdefault(one.acquisition, []).append(one)
    separable = len(groups) > 1 and all(np.diff(np.sort(_depths(group))).min(initial=np.inf) >= MIN_POSITION_TOLERANCE_MM for group in groups.values())
    if not separable:
        a, b = repeated[0]
        raise AbdoSegError(
            f"{folder}: {len(repeated)} slice position(s) occur more than once ({a.path.name} and {b.path.name} both at "
            f"{_depths([a])[0]:.2f} mm along the slice normal) and the AcquisitionNumber does not tell them apart; keep one copy of each slice."
        )
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), _number_order(item[0])))
    others = _listing([f"acquisition {number or '(none)'} ({len(group)} slices)" for number, group in ranked[1:]])
    notes.append(f"{folder}: {_name(slices)} holds {len(groups)} acquisitions at the same slice positions; "
                 f"used acquisition {ranked[0][0] or '(none)'} ({len(ranked[0][1])} slices); others: {others}.")
    return ranked[0][1]


def _stack(folder: Path, slices: list[Slice]) -> Series:
    """The checked grid of ``slices``: sorted along the normal (frames keep their file order)."""
    first = slices[0]
    row, column, normal = _axes(first)
    if not first.multiframe:
        slices = [slices[i] for i in np.argsort(_depths(slices), kind="stable")]
    positions = np.array([one.position for one in slices])
    count = len(slices)
    slice_axis = normal  # a single slice: the reader refuses it as 2D
    if count > 1:
        step = (positions[-1] - positions[0]) / (count - 1)
        _check_regular(folder, slices, positions, normal, abs(step @ normal))
        slice_axis = normal * np.sign(step @ normal) * np.linalg.norm(step)  # ITK's: the normal, first slice to last, the mean step long
    affine = np.eye(4)
    affine[:3, 0] = row * first.pixel_spacing[1]  # PixelSpacing is (between rows, between columns)
    affine[:3, 1] = column * first.pixel_spacing[0]
    affine[:3, 2] = slice_axis
    affine[:3, 3] = positions[0]
    files = list(dict.fromkeys(one.path for one in slices))
    return Series(files, (first.size[1], first.size[0], count), affine)


def _check_regular(folder: Path, slices: list[Slice], positions: np.ndarray, normal: np.ndarray, spacing: float) -> None:
    """Refuse frames out of order, slices off the normal (gantry tilt) and missing or unevenly spaced slices."""
    tolerance = max(MIN_POSITION_TOLERANCE_MM, 0.01 * spacing)
    depth = (positions - positions[0]) @ normal
    gaps = np.diff(depth)
    if slices[0].multiframe and not ((gaps > tolerance).all() or (gaps < -tolerance).all()):
        raise AbdoSegError(f"{slices[0].path}: its frames are not in slice order (or repeat a position), so ITK would not stack them correctly.")
    drift = (positions - positions[0]) - np.outer(depth, normal)
    if np.linalg.norm(drift, axis=1).max() > tolerance:
        angle = np.degrees(np.arctan2(np.linalg.norm(drift[-1]), abs(depth[-1])))
        tilt = slices[0].gantry_tilt
        stated = f", GantryDetectorTilt {tilt:g} degrees" if tilt else ""
        raise AbdoSegError(
            f"{folder}: its slices are not stacked along the normal of their planes (a gantry tilt of about {angle:.1f} degrees{stated}), "
            f"a sheared volume that ITK would straighten, misplacing the anatomy; resample it onto a regular grid first "
            f"(3D Slicer's DICOM module does: acquisition geometry regularization) and save it as NIfTI."
        )
    regular = np.arange(len(depth)) * (depth[-1] / (len(depth) - 1))
    if np.abs(depth - regular).max() > tolerance:
        worst = int(np.argmax(np.abs(np.abs(gaps) - spacing)))
        gap, usual = abs(gaps[worst]), float(np.median(np.abs(gaps)))
        a, b = slices[worst], slices[worst + 1]
        where = f"between {a.path.name} and {b.path.name} (at {a.position @ normal:.2f} and {b.position @ normal:.2f} mm along the slice normal)"
        if gap > 1.5 * usual:
            problem = f"about {round(gap / usual) - 1:d} slice(s) are missing {where}: they are {gap:.3g} mm apart, the other slices {usual:.3g} mm"
        else:
            problem = f"its slices are unevenly spaced ({np.abs(gaps).min():.3g} to {np.abs(gaps).max():.3g} mm apart; {gap:.3g} mm {where})"
        raise AbdoSegError(f"{folder}: {problem}; AbdoSeg does not invent a uniform spacing: add the missing slices or export the series again.")


def _axes(one: Slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unit row, column and normal directions of a slice (its cosines are written with a few digits only)."""
    row, column = one.orientation[:3] / np.linalg.norm(one.orientation[:3]), one.orientation[3:] / np.linalg.norm(one.orientation[3:])
    normal = np.cross(row, column)
    return row, column, normal / np.linalg.norm(normal)


def _depths(slices: list[Slice]) -> np.ndarray:
    """Each slice's position along the normal of the first slice's plane, in mm."""
    normal = _axes(slices[0])[2]
    return np.array([one.position @ normal for one in slices])


def _name(group: list[Slice]) -> str:
    first = group[0]
    name = f"series {first.series or '(no SeriesInstanceUID)'}" + (f" '{first.description}'" if first.description else "")
    return name + (f" in {first.path.name}" if first.multiframe else "")


def _describe(group: list[Slice]) -> str:
    first = group[0]
    kinds = ", ".join(kind for kind in (first.modality if first.modality != "CT" else "", "localizer" if first.localizer else "") if kind)
    return f"{_name(group)} ({len(group)} slice{'s' if len(group) != 1 else ''}{', ' + kinds if kinds else ''})"


def _listing(items: list[str], most: int = 5) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def _number_order(text: str) -> tuple[float, str]:
    try:
        return float(text), text
    except ValueError:
        return np.inf, text


def _cosines(one: Slice) -> str:
    return "ImageOrientationPatient " + "\\".join(f"{v:.4g}" for v in one.orientation)


def _plane(one: Slice) -> str:
    return f"{one.size[1]}x{one.size[0]} pixels of {one.pixel_spacing[1]:g} x {one.pixel_spacing[0]:g} mm"
