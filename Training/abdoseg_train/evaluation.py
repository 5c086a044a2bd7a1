"""``abdoseg-train evaluate``: segment labelled cases with a bundle and score them per organ.

Unlike validation during training (model grid), this runs the full inference pipeline and
compares on each case's own CT grid, as a user of ``abdoseg segment`` would see it.
"""

from __future__ import annotations

import math

import numpy as np

from AbdoSegLib.model.bundle import ModelBundle
from AbdoSegLib.analysis.ctcheck import check_ct
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.analysis.metrics import compare_labelmaps
from AbdoSegLib.organs import ORGANS
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.io.regrid import labels_onto_grid

from .cases import Case

METRICS = ("dice", "hd95", "assd", "nsd")


def evaluate(bundle: ModelBundle, cases: list[Case], device: str = "auto") -> dict[str, dict[str, dict]]:
    """{case name: {organ: metrics}} for the organs each case labels."""
    results = {}
    for case in cases:
        ct = read_image(case.image)
        check_ct(ct, str(case.image))
        reference = labels_onto_grid(read_image(case.labels), ct)
        prediction = segment(ct, bundle, device)
        metrics = compare_labelmaps(prediction.labels, reference)
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
