"""Plausibility checks of a labelmap: organ volumes against typical adult ranges, and laterality.

Nothing here fails: a finding is a warning sentence for the user to look at.

Laterality is judged in world space. World coordinates are RAS: +x points to the patient's
right (the DICOM LPS +x, the patient's left, negated). The sample case shared/data/ts_example
settles the sign: its liver's centroid lies at x = +67 mm, its spleen's at x = -113 mm.
"""

from __future__ import annotations

import numpy as np

from ..image import Image, bounding_boxes
from ..organs import ORGANS, organ_by_name

# Typical adult organ volumes (mL), wide on purpose: the check is for gross errors (a missed
# lobe, a merged neighbour, a cut-off field of view), not for diagnosis.
# - liver 800-2500: Kromrey et al., Eur J Radiol 2018;106:32-37 (MRI of 2773 adults, SHIP:
#   1505 +- 385 mL; 1360 +- 273 mL without liver disease); Feng et al., World J Gastroenterol
#   2017;23(27):4968-4977 (CT of 369 adults: 1205 +- 258 mL, range 594-2250 mL).
# - kidney 90-300 each: Cheong et al., Clin J Am Soc Nephrol 2007;2(1):38-45 (MRI: mean
#   202 mL in men, 154 mL in women).
# - spleen 80-400: Prassopoulos et al., Eur Radiol 1997;7(2):246-248 (CT of 140 adults: mean
#   215 mL, range 107-315 mL); Caglar et al., Folia Morphol 2014;73(3) (CT of 212 adults:
#   198 +- 88 mL).
_RANGES_ML = {"liver": (800.0, 2500.0), "right_kidney": (90.0, 300.0), "left_kidney": (90.0, 300.0), "spleen": (80.0, 400.0)}
TYPICAL_VOLUME_ML: dict[str, tuple[float, float]] = {organ.name: _RANGES_ML[organ.name] for organ in ORGANS}
"""Typical adult volume range (low, high) in mL of every organ of the table, keyed by organ name."""

LATERALITY_PAIRS: tuple[tuple[str, str], ...] = (("right_kidney", "left_kidney"), ("liver", "spleen"))
"""(organ on the patient's right, organ on the patient's left) pairs checked against each other."""

BODY_HU = -500.0
"""CT voxels above this HU are the body (and the table) when the CT gives the midline."""


def qa_report(labels: Image, ct: Image | None = None, measurements: dict[str, dict] | None = None) -> dict:
    """Volumes and laterality of a labelmap (integer organ ids, shape (I, J, K)).

    measurements: ``summary.organ_measurements(labels, ct)`` when the caller has it already:
    its ``volume_ml`` are the volumes judged and reported (so that a summary states each volume
    once, and the voxels are not counted again); without it the organs' voxels are counted here.

    For each pair of ``LATERALITY_PAIRS`` whose organs are both present, the right-side organ's
    centroid must lie at a larger world x (further to the patient's right) than the left-side
    one's. When only one organ of a pair is present, its centroid is compared with the body's
    midline instead: the x of the centroid of the CT's voxels above ``BODY_HU`` when ``ct`` is
    given (any grid), else the x of the centre of the labelmap's field of view.

    Returns {"volumes": {organ: {"volume_ml", "typical_range_ml", "within", "touches_edge"}},
    "laterality": {"midline_x_mm", "midline_from", "centroids_ras_mm": {organ: [x, y, z] or None},
    "checks": [{"rule", "ok", "x_mm"}], "ok": all checks pass (None without any check)},
    "warnings": [sentences]}.
    """
    boxes = bounding_boxes(labels.array)
    volumes, centroids, warnings = {}, {}, []
    for organ in ORGANS:
        box = boxes[organ.label - 1] if organ.label <= len(boxes) else None  # None: no voxel of the organ
        mask = labels.array[box] == organ.label if box is not None else None
        if measurements is not None:
            volume_ml = float(measurements[organ.name]["volume_ml"])
        else:
            volume_ml = int(np.count_nonzero(mask)) * labels.voxel_volume_ml if box is not None else 0.0
        low, high = TYPICAL_VOLUME_ML[organ.name]
        touches_edge = box is not None and any(s.start == 0 or s.stop == n for s, n in zip(box, labels.shape))
        volumes[organ.name] = {
            "volume_ml": round(volume_ml, 2),
            "typical_range_ml": [low, high],
            "within": low <= volume_ml <= high,
            "touches_edge": touches_edge,
        }
        centroids[organ.name] = _centroid_ras(mask, tuple(s.start for s in box), labels.affine) if box is not None else None
        if box is None:
            warnings.append(f"No {organ.title.lower()} was found.")
        elif not low <= volume_ml <= high:
            edge = "; it touches the edge of the image, so it may be only partly in the field of view" if touches_edge else ""
            warnings.append(
                f"The {organ.title.lower()} volume, {volume_ml:.0f} mL, is outside the typical adult range of {low:.0f}-{high:.0f} mL{edge}."
            )
    midline_x, midline_from = _midline_x(labels, ct)
    findings = _laterality_checks({name: c[0] for name, c in centroids.items() if c is not None}, midline_x)
    warnings += [warning for check, warning in findings if not check["ok"]]
    checks = [check for check, _ in findings]
    return {
        "volumes": volumes,
        "laterality": {
            "midline_x_mm": midline_x,
            "midline_from": midline_from,
            "centroids_ras_mm": {name: None if c is None else [round(v, 1) for v in c] for name, c in centroids.items()},
            "checks": checks,
            "ok": all(check["ok"] for check in checks) if checks else None,
        },
        "warnings": warnings,
    }


def _laterality_checks(x_mm: dict[str, float], midline_x: float) -> list[tuple[dict, str]]:
    """One (check, warning if it fails) per pair with an organ present; check = {"rule", "ok", "x_mm"} (world x, RAS mm)."""
    flipped = "the labels or the image's header may be left-right flipped"
    findings = []
    for right_name, left_name in LATERALITY_PAIRS:
        right, left = organ_by_name(right_name).title.lower(), organ_by_name(left_name).title.lower()
        if right_name in x_mm and left_name in x_mm:
            xr, xl = x_mm[right_name], x_mm[left_name]
            ok = xr > xl
            rule = f"the {right} lies on the patient's right of the {left}"
            warning = f"The {right} lies on the patient's left of the {left} (centroid x {xr:.0f} mm vs {xl:.0f} mm, RAS); {flipped}."
            values = {right_name: xr, left_name: xl}
        elif right_name in x_mm or left_name in x_mm:
            name, title, side, other = (right_name, right, "right", "left") if right_name in x_mm else (left_name, left, "left", "right")
            x = x_mm[name]
            ok = x > midline_x if side == "right" else x < midline_x
            rule = f"the {title} lies on the patient's {side} of the midline"
            warning = f"The {title} lies on the patient's {other} of the midline (centroid x {x:.0f} mm, midline x {midline_x:.0f} mm, RAS); {flipped}."
            values = {name: x, "midline": midline_x}
        else:
            continue
        findings.append(({"rule": rule, "ok": bool(ok), "x_mm": {k: round(float(v), 1) for k, v in values.items()}}, warning))
    return findings


def _midline_x(labels: Image, ct: Image | None) -> tuple[float, str]:
    """World x (RAS mm) of the body's midline and where it comes from."""
    if ct is not None:
        body = np.asarray(ct.array) > BODY_HU
        if body.any():
            return _tidy(_centroid_ras(body, (0, 0, 0), ct.affine)[0]), "centroid of the body in the CT"
    centre = (np.array(labels.shape) - 1) / 2.0
    return _tidy(labels.affine[0, :3] @ centre + labels.affine[0, 3]), "centre of the field of view"


def _tidy(x_mm: float) -> float:
    """A coordinate rounded to 0.1 mm, never -0.0 (a centred grid gives floating-point dust around 0)."""
    return float(round(x_mm, 1)) + 0.0


def _centroid_ras(mask: np.ndarray, start: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) centroid, shape (3,), of a non-empty boolean mask cut from a grid at voxel ``start``.

    From the mask's projections onto each axis, so that no (N, 3) index array is built.
    """
    count = np.count_nonzero(mask)
    mean_index = np.array(
        [
            (np.arange(mask.shape[axis]) + start[axis]) @ np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != axis)) / count
            for axis in range(3)
        ]
    )
    return affine[:3, :3] @ mean_index + affine[:3, 3]
