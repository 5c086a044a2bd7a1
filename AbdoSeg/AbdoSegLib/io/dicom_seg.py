"""DICOM Segmentation objects (``segmentation.dcm``) of a labelmap on the grid of its source DICOM series, via highdicom.

A binary segmentation with one segment per organ present (numbered 1.. in the organ table's order), each coded
from ``organs.ORGANS`` (SNOMED CT category, type and, for the kidneys, the laterality modifier) and identified as
made by AbdoSeg (version, model id). Each frame is placed on the source image it segments by that image's
position and orientation, never by file order. highdicom is imported when a SEG is written, so that the engine
imports without it (``pip install abdoseg[dicom]``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom

from .. import __version__
from ..errors import AbdoSegError
from ..image import Image
from ..organs import CATEGORY, ORGANS
from .atomic import atomic_path
from .dicom_series import dicom_series_files
from .itk_grid import LPS_TO_RAS

SERIES_NUMBER = 9900
"""Series number of the SEG: well above a scanner's numbers, so that it sorts after the series it segments."""

TOLERANCE = 0.05
"""How far (in voxels) a source image's pixel centres may lie from the labelmap's voxel centres."""

_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
             "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
"""What a SEG needs from each source image to refer to it and to place its frame."""


def require_dicom_seg(ct_path: str | Path) -> None:
    """Refuse, before any work, a DICOM SEG that cannot be written: highdicom missing, or an input that is
    not a DICOM series folder (a SEG refers to the images of a series)."""
    if importlib.util.find_spec("highdicom") is None:
        raise AbdoSegError("--dicom-seg needs highdicom, which is not installed; pip install abdoseg[dicom] adds it.")
    if not Path(ct_path).exists():
        raise AbdoSegError(f"{ct_path} does not exist.")
    if not Path(ct_path).is_dir():
        raise AbdoSegError(f"--dicom-seg needs a DICOM series folder as input, and {ct_path} is not a folder; "
                           f"a DICOM SEG refers to the images of the series it segments.")


def dicom_seg_sources(ct_path: str | Path) -> list[Path]:
    """The files of the DICOM series at ``ct_path`` (the one ``read_image`` reads) that a SEG of it will refer to,
    checked before any work: ``require_dicom_seg``, then ``source_headers``."""
    require_dicom_seg(ct_path)
    files = dicom_series_files(Path(ct_path))
    source_headers(files)
    return files


def source_headers(files: list[Path]) -> list[pydicom.Dataset]:
    """The headers (pydicom Datasets without pixel data) of the series ``files``, one per file.

    Raises AbdoSegError when a file is not DICOM, is a multi-frame image, lacks what a SEG needs to refer to it
    (UIDs, position, orientation, pixel spacing: anonymisers sometimes blank the UIDs), or when the files
    belong to more than one series.
    """
    headers = []
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as error:
            raise AbdoSegError(f"{file} could not be read as DICOM ({error}).") from None
        missing = [keyword for keyword in _REQUIRED if not header.get(keyword)]
        if missing:
            raise AbdoSegError(f"{file} has no {', '.join(missing)}, which a DICOM SEG needs to refer to its source images.")
        if int(header.get("NumberOfFrames") or 1) > 1:
            raise AbdoSegError(f"{file} is a multi-frame image; AbdoSeg writes DICOM SEG for series of single-frame images only.")
        headers.append(header)
    if len({header.SeriesInstanceUID for header in headers}) > 1:
        raise AbdoSegError(f"the files {files[0]} ... {files[-1]} belong to more than one DICOM series.")
    return headers


def write_dicom_seg(labels: Image, source_files: list[Path], path: str | Path, model_id: str) -> None:
    """Write ``labels`` (uint8 organ ids, shape (I, J, K), on the grid the series ``source_files`` is read as)
    as a binary DICOM SEG at ``path``, atomically.

    Only organs present get a segment. Raises AbdoSegError when the labelmap holds no organ (a SEG needs at
    least one segment), holds values that are not organ ids, or is not on the grid of the source images.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    headers = source_headers(source_files)
    counts = np.bincount(np.asarray(labels.array, dtype=np.uint8).ravel(), minlength=256)
    known = {0} | {organ.label for organ in ORGANS}
    strangers = [value for value in np.flatnonzero(counts) if value not in known]
    if strangers:
        raise AbdoSegError(f"the labelmap for {path} holds values that are not organ ids ({', '.join(map(str, strangers[:5]))}).")
    present = [organ for organ in ORGANS if counts[organ.label]]
    if not present:
        raise AbdoSegError(f"the labelmap for {path} holds no organ, and a DICOM SEG needs at least one segment.")

    segment_of_label = np.zeros(256, dtype=np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="AbdoSeg", family=codes.cid7162.ArtificialIntelligence, version=__version__, parameters={"model": model_id}
    )
    descriptions = []
    for number, organ in enumerate(present, start=1):
        segment_of_label[organ.label] = number
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=organ.title,
            segmented_property_category=_code(CATEGORY),
            segmented_property_type=_code(organ.type_code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*(255 * np.asarray(organ.color))),
        )
        if organ.modifier_code:  # highdicom has no argument for it: the laterality goes inside the type's code item
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [_code(organ.modifier_code)]
        descriptions.append(description)

    frames = segment_of_label[source_frames(labels, headers, source_files)]
    segmentation = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="AbdoSeg",
        manufacturer_model_name="AbdoSeg",
        software_versions=__version__,
        device_serial_number=model_id[:64],  # software has no serial number: the model file stands for the device
        content_label="ABDOSEG",
        content_description="Liver, kidneys and spleen segmented by AbdoSeg",
        series_description="AbdoSeg organs",
    )
    with atomic_path(path) as temporary:
        segmentation.save_as(temporary)


def source_frames(labels: Image, headers: list[pydicom.Dataset], files: list[Path]) -> np.ndarray:
    """The labelmap cut into the frames of the source images: shape (len(headers), Rows, Columns), one per header.

    Each frame is found by the image's position and orientation (pixel (r, c) lies at
    ImagePositionPatient + c * column spacing * row direction + r * row spacing * column direction, in LPS).
    Refuses with one sentence unless every image's pixels are voxel centres of one slice of the labelmap
    and the images cover every slice exactly once: the labels must be on the series' own grid.
    """
    to_index = np.linalg.inv(labels.affine) @ LPS_TO_RAS  # LPS mm -> voxel index of the labelmap
    shape = np.array(labels.shape)
    frames, slices = [], []
    for header, file in zip(headers, files):
        rows, columns = int(header.Rows), int(header.Columns)
        row_direction, column_direction = np.array(header.ImageOrientationPatient, dtype=np.float64).reshape(2, 3)
        row_spacing, column_spacing = (float(s) for s in header.PixelSpacing)
        first = to_index[:3, :3] @ np.array(header.ImagePositionPatient, dtype=np.float64) + to_index[:3, 3]
        down = _lattice_step(to_index[:3, :3] @ (row_spacing * column_direction), rows)
        across = _lattice_step(to_index[:3, :3] @ (column_spacing * row_direction), columns)
        start = np.rint(first).astype(int)
        in_plane = (-1, -1) if down is None or across is None else (np.flatnonzero(down)[0], np.flatnonzero(across)[0])
        if in_plane[0] == in_plane[1] or np.abs(first - start).max() > TOLERANCE:
            raise _off_grid(labels, file, "its pixels are not voxel centres of the labelmap")
        normal = 3 - sum(in_plane)
        if (rows, columns) != (shape[in_plane[0]], shape[in_plane[1]]):
            raise _off_grid(labels, file, f"it has {rows}x{columns} pixels, not a whole slice of the labelmap")
        index = start[:, None, None] + down[:, None, None] * np.arange(rows)[:, None] + across[:, None, None] * np.arange(columns)
        if index.min() < 0 or (index.max(axis=(1, 2)) >= shape).any():
            raise _off_grid(labels, file, "it lies outside the labelmap")
        frames.append(labels.array[tuple(index)])
        slices.append((normal, start[normal]))
    if sorted(slices) != [(slices[0][0], k) for k in range(shape[slices[0][0]])]:
        raise _off_grid(labels, files[0], f"the {len(files)} images of its series do not cover the labelmap's slices once each")
    return np.stack(frames).astype(np.uint8)


def _lattice_step(step: np.ndarray, count: int) -> np.ndarray | None:
    """The unit voxel step (one of ±e_i, ints) that ``step`` (voxel units per pixel) is, to within TOLERANCE over
    ``count`` pixels, or None."""
    unit = np.rint(step)
    if np.abs(unit).sum() != 1 or np.abs(step - unit).max() * max(count - 1, 1) > TOLERANCE:
        return None
    return unit.astype(int)


def _off_grid(labels: Image, file: Path, reason: str) -> AbdoSegError:
    size = "x".join(str(n) for n in labels.shape)
    return AbdoSegError(f"the labelmap ({size} voxels) is not on the grid of the DICOM series of {file}: {reason}.")


def _code(code: tuple[str, str, str]):
    """A highdicom CodedConcept of an organ-table code (coding scheme, code value, code meaning)."""
    from highdicom.sr import CodedConcept

    scheme, value, meaning = code
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)
