"""Does an NRRD or MetaImage header say where its voxels lie? ITK (and so 3D Slicer) fills a missing voxel size
with 1 mm and a missing orientation with the identity, silently; AbdoSeg refuses such a file instead of guessing.

NRRD needs ``space directions`` (or, from older writers, ``spacings`` with a ``space``); MetaImage needs
``ElementSpacing`` (or ``ElementSize``) and one of ``TransformMatrix``, ``Orientation`` or ``Rotation``.
"""

from __future__ import annotations

from pathlib import Path

import nrrd

from ..errors import AbdoSegError

NRRD_SUFFIXES = (".nrrd", ".nhdr")
META_SUFFIXES = (".mha", ".mhd")
_META_ORIENTATION = ("TransformMatrix", "Orientation", "Rotation")
_META_HEADER_LINES = 200  # MetaImage headers are a few dozen "Key = value" lines before ElementDataFile


def check_declared_geometry(path: Path) -> None:
    """Raise AbdoSegError with one sentence when the NRRD or MetaImage header at ``path`` lacks the voxel size or
    the orientation; other formats pass."""
    name = path.name.lower()
    if name.endswith(NRRD_SUFFIXES):
        missing = _nrrd_missing(path)
    elif name.endswith(META_SUFFIXES):
        missing = _meta_missing(path)
    else:
        return
    if missing:
        raise AbdoSegError(f"{path} does not say its {missing}, which ITK, and so 3D Slicer, would invent (1 mm voxels, "
                           f"the scanner's axes); export it again with its geometry, e.g. as NIfTI or from 3D Slicer.")


def _nrrd_missing(path: Path) -> str | None:
    try:
        header = nrrd.read_header(str(path))
    except (nrrd.NRRDError, OSError, UnicodeDecodeError, ValueError):
        return None  # not a readable header: ITK's reader names the problem
    if "space directions" in header:
        return None
    if "spacings" in header:
        return "orientation (its header has spacings but no 'space directions')"
    return "voxel size or orientation (its header has no 'space directions')"


def _meta_missing(path: Path) -> str | None:
    keys = set()
    try:
        with open(path, "rb") as handle:
            for _line in range(_META_HEADER_LINES):
                line = handle.readline().decode("latin-1")
                key = line.split("=", 1)[0].strip()
                keys.add(key)
                if key == "ElementDataFile" or not line:
                    break
    except OSError:
        return None
    if "NDims" not in keys:
        return None  # not a MetaImage header: ITK's reader names the problem
    lacks = []
    if not keys & {"ElementSpacing", "ElementSize"}:
        lacks.append("voxel size (no ElementSpacing)")
    if not keys & set(_META_ORIENTATION):
        lacks.append("orientation (no TransformMatrix)")
    return " or ".join(lacks) or None
