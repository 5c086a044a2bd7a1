"""``abdoseg-train evaluate``: segment labelled cases with a bundle and score them per organ.

Unlike validation during training (model grid), this runs the full inference pipeline and
compares on each case's own CT grid, as a user of ``abdoseg segment`` would see it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from AbdoSegLib.analysis.ctcheck import check_ct
from AbdoSegLib.analysis.metrics import BOTH_EMPTY, COMPARED, PREDICTION_EMPTY, REFERENCE_EMPTY, compare_labelmaps
from AbdoSegLib.image import Image
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.io.regrid import labels_onto_grid
from AbdoSegLib.model.bundle import ModelBundle
from AbdoSegLib.organs import ORGANS

from .cases import Case

METRICS = ("dice", "hd95", "assd", "nsd")
OVERLAP_METRICS = ("dice", "nsd")  # defined (0) for a missed organ; the distances are not


def evaluate(bundle: ModelBundle, cases: list[Case], device: str = "auto") -> dict[str, dict[str, dict]]:
    """{case name: {organ: metrics}} of the bundle's segmentation, for the organs each case labels."""
    return score_cases(cases, lambda ct: segment(ct, bundle, device).labels)


def score_cases(cases: list[Case], segmenter: Callable[[Image], Image]) -> dict[str, dict[str, dict]]:
    """{case name: {organ: metrics}} for the organs each case labels.

    segmenter: CT Image -> labelmap (AbdoSeg ids) on that CT's grid. The reference is the
    case's labels in AbdoSeg ids whatever its layout (``Case.load_labels``), moved onto the
    CT grid by world position.
    """
    results = {}
    for case in cases:
        ct = read_image(case.image)
        check_ct(ct, str(case.image))
        reference = labels_onto_grid(case.load_labels(), ct)
        metrics = compare_labelmaps(segmenter(ct), reference)
        results[case.name] = {organ.name: metrics[organ.name] for organ in ORGANS if organ.label in case.labelled}
    return results


def organ_table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown table, one row per organ: how many cases label it; of those, how many drew it where the reference has it
    (found), drew nothing where it has none (absent: right), drew nothing where it has it (missed) and drew it where it has
    none (false); mean Dice and NSD over the cases whose reference has it (a miss scores 0), mean HD95 and ASSD (mm) over
    the found ones ("-": no such case)."""
    lines = ["| organ | cases | found | absent | missed | false | " + " | ".join(METRICS) + " |", "|---|---|---|---|---|---|" + "---|" * len(METRICS)]
    for organ in ORGANS:
        rows = [scores[organ.name] for scores in results.values() if organ.name in scores]
        if not rows:
            continue
        counts = [sum(row["status"] == status for row in rows) for status in (COMPARED, BOTH_EMPTY, PREDICTION_EMPTY, REFERENCE_EMPTY)]
        in_reference = [row for row in rows if row["status"] in (COMPARED, PREDICTION_EMPTY)]
        found = [row for row in rows if row["status"] == COMPARED]
        cells = [_mean(in_reference if metric in OVERLAP_METRICS else found, metric) for metric in METRICS]
        lines.append(f"| {organ.name} | {len(rows)} | " + " | ".join(map(str, counts)) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean(rows: list[dict], metric: str) -> str:
    """The mean of ``metric`` over ``rows`` to three decimals, "-" for no rows."""
    return f"{np.mean([row[metric] for row in rows]):.3f}" if rows else "-"
