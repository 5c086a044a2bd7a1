"""``abdoseg export LABELS -o DIR --format stl|obj|ply|vtp``: organ surfaces from a labelmap.

LABELS is a labelmap (NIfTI, NRRD: 0 background, 1 liver, 2 right kidney, 3 left kidney,
4 spleen) or a Slicer segmentation (.seg.nrrd), whose segments are matched to the organs by
name (the organ's title or machine name, any case).
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import nrrd
import numpy as np
import slicerio

from ..atomic import atomic_directory
from ..errors import AbdoSegError
from ..image import Image
from ..imageio import LPS_TO_RAS, read_image
from ..meshfiles import FORMATS
from ..organs import ORGANS
from ..surfaces import DECIMATION_FACTOR, SMOOTHING_FACTOR, export_surfaces

SEGMENTATION_SUFFIX = ".seg.nrrd"


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write organ surfaces (STL, OBJ, PLY, VTP) from a labelmap")
    export.add_argument("labels", type=Path, help="labelmap (.nii.gz, .nrrd; organ ids 0-4) or Slicer segmentation (.seg.nrrd)")
    export.add_argument("-o", "--output", type=Path, required=True, help="output folder (created; must not exist unless --force)")
    export.add_argument("--format", choices=FORMATS, default="stl", help="surface file format (default: stl)")
    space = export.add_mutually_exclusive_group()
    space.add_argument("--lps", dest="coordinates", action="store_const", const="lps",
                       help="LPS coordinates, as 3D Slicer exports surfaces (default)")
    space.add_argument("--ras", dest="coordinates", action="store_const", const="ras", help="RAS coordinates")
    export.add_argument("--merge", action="store_true", help="one file holding every organ instead of one file per organ")
    export.add_argument("--smoothing", type=float, default=SMOOTHING_FACTOR,
                        help=f"smoothing factor, 0 (none) to 1 (strong), as in 3D Slicer (default: {SMOOTHING_FACTOR})")
    export.add_argument("--decimation", type=float, default=DECIMATION_FACTOR,
                        help=f"decimation factor, 0 (none) to 1 (fewest triangles), as in 3D Slicer (default: {DECIMATION_FACTOR})")
    export.add_argument("--force", action="store_true", help="replace an existing output folder")
    export.set_defaults(run=run_export, coordinates="lps")


def run_export(args: argparse.Namespace) -> None:
    labels = read_labels(args.labels)
    with atomic_directory(args.output, overwrite=args.force) as staging:
        written = export_surfaces(labels, staging, args.format, args.coordinates, args.merge, args.smoothing, args.decimation)
    for path in written:
        print(args.output / path.name)
    print(f"{len(written)} files in {args.output} ({args.coordinates.upper()} coordinates, mm)")


def read_labels(path: Path) -> Image:
    """An organ labelmap (uint8, ids of organs.py) from a labelmap file or a Slicer .seg.nrrd.

    Raises AbdoSegError when the file holds values that are not whole organ ids.
    """
    if path.name.lower().endswith(SEGMENTATION_SUFFIX) and path.is_file():
        return _read_segmentation(path)
    labels = read_image(path)
    array = labels.array
    allowed = [0] + [organ.label for organ in ORGANS]
    values = np.unique(array)
    unknown = values[~np.isin(values, allowed)]
    if unknown.size:
        shown = ", ".join(f"{v:g}" for v in unknown[:5]) + (", ..." if unknown.size > 5 else "")
        table = ", ".join(f"{organ.label} {organ.name}" for organ in ORGANS)
        raise AbdoSegError(f"{path} holds values ({shown}) that are not organ labels (0 background, {table}).")
    return labels.with_array(array.astype(np.uint8))


def _read_segmentation(path: Path) -> Image:
    """A Slicer segmentation's segments named like organs, as one organ labelmap on its grid."""
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except (nrrd.NRRDError, OSError, ValueError, KeyError, EOFError, zlib.error) as error:
        raise AbdoSegError(f"{path} could not be read as a Slicer segmentation ({error}).") from None
    names = {name.lower(): organ for organ in ORGANS for name in (organ.name, organ.title)}
    voxels = segmentation["voxels"]
    array = np.zeros(voxels.shape[-3:], dtype=np.uint8)
    found = []
    for segment in segmentation["segments"]:
        organ = names.get(str(segment.get("name", "")).strip().lower())
        if organ is not None:
            array[slicerio.segment_mask(segmentation, segment)] = organ.label
            found.append(organ)
    if not found:
        titles = ", ".join(organ.title for organ in ORGANS)
        raise AbdoSegError(f"{path} has no segment named like an organ ({titles}).")
    return Image(array, LPS_TO_RAS @ np.asarray(segmentation["ijkToLPS"], dtype=np.float64))
