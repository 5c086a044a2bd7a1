"""``abdoseg-train evaluate``: segment labelled cases with a bundle and score them per organ.

Unlike validation during training (model grid), this runs the full inference pipeline and
compares on each case's own CT grid, as a user of ``abdoseg segment`` would see it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from AbdoSegLib.analysis.ctcheck import check_ct
from AbdoSegLib.analysis.metrics import compare_labelmaps
from AbdoSegLib.image import Image
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.io.regrid import labels_onto_grid
from AbdoSegLib.model.bundle import ModelBundle
from AbdoSegLib.organs import ORGANS

from .cases import Case

METRICS = ("dice", "hd95", "assd", "nsd")


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
    """Markdown table: per organ, mean (and the number of cases) of each metric."""
    lines = ["| organ | cases | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for organ in ORGANS:
        rows = [scores[organ.name] for scores in results.values() if organ.name in scores]
        if not rows:
            continue
        cells = []
        for metric in METRICS:
            values = [row[metric] for row in rows]
            if any(v is None or not math.isfinite(v) for v in values):
                cells.append("missed" if any(v is not None and not math.isfinite(v) for v in values) else "-")
            else:
                cells.append(f"{np.mean(values):.3f}")
        lines.append(f"| {organ.name} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
