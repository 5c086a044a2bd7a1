"""``abdoseg compare PRED REF``: per-organ metrics of a labelmap against a reference.

    abdoseg compare PRED REF [--json OUT.json] [--csv OUT.csv] [--map MAPPING] [--force]

PRED and REF are NIfTI / NRRD labelmaps or Slicer ``.seg.nrrd`` segmentations. PRED uses
AbdoSeg's organ ids; REF too, unless ``--map`` says how its ids become ours: a preset
(``PRESETS``) or ``"5:1,2:2,3:3,1:4"`` (their id : our id or organ name); their ids not in the
map become background. In a .seg.nrrd, segments are matched to organs by terminology (type and
modifier codes) or, failing that, by name (``organs.organ_from_name``). REF may lie on another
grid: it is resampled onto PRED's by world position (nearest neighbour), here and only here (the
metrics take two labelmaps on one grid, and run on PRED's).

Fields of view: the metrics count only the region both labelmaps cover (``analysis.metrics.
compare_in_common_region``): PRED's organ labels where REF's field of view does not reach are
not false positives, REF's organ labels beyond PRED's field of view are not misses. When organ
labels on either side lie outside that region, a ``note:`` on stderr says how much, and the JSON
gets, beside the organs, a ``"region"`` entry (the same sentence as ``"note"``, the region's
share of PRED's field of view and its RAS box, the mL left out on each side per organ); the
table and the CSV hold the organs only.

Prints a table and writes, if asked, JSON ``{organ: {metric: value}}`` (plus ``"region"`` as
above) and CSV (one row per organ). Distances are in mm. A distance involving an organ found on
one side only is infinite: written "inf" (a string in JSON); metrics of an organ found on neither
side are not applicable: null in JSON, an empty cell in CSV. ``status`` says which case each organ is.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from ..errors import AbdoSegError
from ..io.atomic import atomic_path
from ..io.image_files import read_image
from ..io.labelmaps import PRESETS, parse_mapping, read_labels
from ..io.regrid import covered_voxels, labels_onto_grid

COLUMNS = ("status", "dice", "nsd", "nsd_tolerance_mm", "hd", "hd95", "assd", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml")
"""The CSV columns after ``organ``."""

def register(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser("compare", help="compare a labelmap with a reference: Dice, Hausdorff, NSD, volumes per organ")
    compare.add_argument("prediction", type=Path, help="labelmap to judge (.nii, .nii.gz, .nrrd or Slicer .seg.nrrd), AbdoSeg ids")
    compare.add_argument("reference", type=Path, help="reference labelmap or Slicer .seg.nrrd (any grid over the same scan)")
    compare.add_argument("--json", type=Path, metavar="OUT.json", help="write the metrics as JSON {organ: {metric: value}}")
    compare.add_argument("--csv", type=Path, metavar="OUT.csv", help="write the metrics as CSV, one row per organ")
    compare.add_argument("--map", dest="mapping",
                         help=f"the reference's ids -> ours: a preset ({', '.join(PRESETS)}) or 'theirs:ours,...' such as '5:1,2:2,3:3,1:4'")
    compare.add_argument("--png", type=Path, metavar="OUT.png", help="write a picture: PRED in colour, REF as outlines (needs --ct)")
    compare.add_argument("--ct", type=Path, help="the CT both labelmaps belong to (background of the picture)")
    compare.add_argument("--force", action="store_true", help="replace existing output files")
    compare.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace) -> None:
    outputs = [path for path in (args.json, args.csv, args.png) if path is not None]
    for path in outputs:
        _check_writable(path, args.force)
    from ..analysis.metrics import (  # builds the surfel table: only for compare
        REGION,
        compare_in_common_region,
        jsonable,
        organ_volumes_outside,
    )

    if args.png is not None and args.ct is None:
        raise AbdoSegError("--png draws the labelmaps over their CT: give it with --ct CT.")
    mapping = parse_mapping(args.mapping) if args.mapping else None
    prediction = read_labels(args.prediction, None)
    reference = read_labels(args.reference, mapping)
    resampled = labels_onto_grid(reference, prediction)
    reference_outside_ml = organ_volumes_outside(reference, covered_voxels(prediction, reference))
    results = jsonable(compare_in_common_region(prediction, resampled, covered_voxels(reference, prediction), reference_outside_ml,
                                                names=(str(args.prediction), str(args.reference))))
    organs = {organ: metrics for organ, metrics in results.items() if organ != REGION}
    if REGION in results:
        print(f"note: {results[REGION]['note']}", file=sys.stderr)
    if args.json is not None:
        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(results, indent=2) + "\n")
    if args.csv is not None:
        with atomic_path(args.csv) as temporary, open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("organ",) + COLUMNS)
            for organ, metrics in organs.items():
                writer.writerow([organ] + ["" if metrics[key] is None else metrics[key] for key in COLUMNS])
    if args.png is not None:
        from ..surfaces.preview import (
            render_preview,  # only when asked: it loads VTK rendering (EGL)
        )

        render_preview(read_image(args.ct), prediction, args.png, reference=resampled)
    print(format_table(organs))  # after the files: a reader that stops early (| head) costs only the table
    for path in outputs:
        print(f"wrote {path}")


def _check_writable(path: Path, force: bool) -> None:
    """Refuse, before any work, an output file that could not be written or must not be replaced."""
    if path.is_dir():
        raise AbdoSegError(f"{path} is a folder; give the name of a file to write.")
    if path.exists() and not force:
        raise AbdoSegError(f"{path} already exists; choose another name or pass --force to replace it.")
    if path.parent.exists() and not path.parent.is_dir():
        raise AbdoSegError(f"cannot write {path}: {path.parent} is a file, not a folder.")
    if not path.parent.is_dir():
        raise AbdoSegError(f"cannot write {path}: its folder {path.parent} does not exist.")
    if not os.access(path.parent, os.W_OK):
        raise AbdoSegError(f"cannot write {path}: its folder {path.parent} is not writable.")
    if path.exists() and not os.access(path, os.W_OK):
        raise AbdoSegError(f"{path} is read-only; make it writable first if it should be replaced.")


def format_table(results: dict[str, dict]) -> str:
    """The metrics as a text table: one row per organ ("n/a": not applicable)."""
    columns = [("dice", "Dice", 3), ("nsd", "NSD", 3), ("hd", "HD mm", 1), ("hd95", "HD95 mm", 1), ("assd", "ASSD mm", 2),
               ("volume_pred_ml", "pred mL", 1), ("volume_ref_ml", "ref mL", 1), ("volume_diff_ml", "diff mL", 1)]
    lines = [f"{'organ':<14}{'status':<18}" + "".join(f"{title:>10}" for _, title, _ in columns)]
    for organ, metrics in results.items():
        cells = []
        for key, _, digits in columns:
            value = metrics[key]
            cells.append("n/a" if value is None else value if isinstance(value, str) else f"{value:.{digits}f}")
        lines.append(f"{organ:<14}{metrics['status']:<18}" + "".join(f"{cell:>10}" for cell in cells))
    return "\n".join(lines)
