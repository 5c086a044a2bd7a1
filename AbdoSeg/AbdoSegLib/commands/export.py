"""``abdoseg export LABELS -o DIR --format stl|obj|ply|vtp``: organ surfaces from a labelmap.

LABELS is a labelmap (NIfTI, NRRD: 0 background, 1 liver, 2 right kidney, 3 left kidney,
4 spleen) or a Slicer segmentation (.seg.nrrd), whose segments are matched to the organs by
terminology or name (``io.labelmaps.read_labels``). Formats, coordinates and the smoothing and
decimation defaults are those of ``surfaces.options``. ``--force`` replaces only a folder of surfaces that export
wrote (``not_surfaces``), never one that holds LABELS.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io.atomic import atomic_directory, foreign_entries, sigterm_as_interrupt
from ..io.labelmaps import read_labels
from ..organs import ORGANS
from ..surfaces.options import COORDINATES, DECIMATION_FACTOR, DEFAULT_COORDINATES, FORMATS, SMOOTHING_FACTOR


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write organ surfaces (STL, OBJ, PLY, VTP) from a labelmap")
    export.add_argument("labels", type=Path, help="labelmap (.nii.gz, .nrrd; organ ids 0-4) or Slicer segmentation (.seg.nrrd)")
    export.add_argument("-o", "--output", type=Path, required=True, help="output folder (created; must not exist unless --force)")
    export.add_argument("--format", choices=FORMATS, default="stl", help="surface file format (default: stl)")
    add_coordinate_options(export)
    export.add_argument("--merge", action="store_true", help="one file holding every organ instead of one file per organ")
    export.add_argument("--smoothing", type=float, default=SMOOTHING_FACTOR,
                        help=f"smoothing factor, 0 (none) to 1 (strong), as in 3D Slicer (default: {SMOOTHING_FACTOR})")
    export.add_argument("--decimation", type=float, default=DECIMATION_FACTOR,
                        help=f"decimation factor, 0 (none) to 1 (fewest triangles), as in 3D Slicer (default: {DECIMATION_FACTOR})")
    export.add_argument("--force", action="store_true", help="replace an existing output folder of a previous export (never other files)")
    export.set_defaults(run=run_export)


def add_coordinate_options(parser: argparse.ArgumentParser) -> None:
    """``--lps`` / ``--ras``: the surfaces' world coordinates (``COORDINATES``), in ``args.coordinates``."""
    space = parser.add_mutually_exclusive_group()
    for coordinates in COORDINATES:
        default = ", as 3D Slicer exports surfaces (default)" if coordinates == DEFAULT_COORDINATES else ""
        space.add_argument(f"--{coordinates}", dest="coordinates", action="store_const", const=coordinates,
                           help=f"surface points in {coordinates.upper()} coordinates (mm){default}")
    parser.set_defaults(coordinates=DEFAULT_COORDINATES)


def run_export(args: argparse.Namespace) -> None:
    from ..surfaces.meshes import (
        export_surfaces,  # VTK loads only for the commands that build surfaces
    )

    labels = read_labels(args.labels, mapping=None)
    with sigterm_as_interrupt(), atomic_directory(args.output, overwrite=args.force, foreign=not_surfaces, keep=[args.labels]) as staging:
        written = export_surfaces(labels, staging, args.format, args.coordinates, args.merge, args.smoothing, args.decimation)
    for path in written:
        print(args.output / path.name)
    print(f"{len(written)} files in {args.output} ({args.coordinates.upper()} coordinates, mm)")


def not_surfaces(folder: Path) -> str | None:
    """Why ``folder`` is not an output folder of export (a phrase), or None when it is: surface files with the names
    export gives them (``ORGAN_LPS.stl``, ``organs_RAS.obj`` and its ``.mtl``, ...) and nothing else."""
    from ..surfaces.meshes import MERGED_NAME

    names = {f"{name}_{space.upper()}.{suffix}" for name in [organ.name for organ in ORGANS] + [MERGED_NAME]
             for space in COORDINATES for suffix in (*FORMATS, "mtl")}
    if not any(folder.iterdir()):
        return "is empty"
    return foreign_entries(folder, lambda entry: entry.name in names and entry.is_file(), "abdoseg export")
