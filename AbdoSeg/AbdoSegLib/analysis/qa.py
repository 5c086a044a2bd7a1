"""Plausibility checks of a labelmap: organ volumes against typical adult ranges, organ extents against
plausible adult sizes, the network's confidence, fluid inside an organ's label, laterality, and whether the
image's header may be mirrored.

Nothing here fails: a finding is a warning sentence for the user to look at. An organ in several distant
pieces is not checked: the clean-up keeps one connected piece per organ.

Laterality is judged in world space. World coordinates are RAS: +x points to the patient's
right (the DICOM LPS +x, the patient's left, negated). The sample case shared/data/ts_example
settles the sign: its liver's centroid lies at x = +67 mm, its spleen's at x = -113 mm.
"""

from __future__ import annotations

import numpy as np

from ..image import Image, bounding_boxes
from ..model.preprocessing import canonical
from ..organs import ORGANS, organ_by_name
from .fluid import fluid_region, fluid_warning

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

# Plausible maxima of an organ's extent along the world axes (R-L, A-P, S-I) in mm, far beyond normal
# adult sizes so that only gross errors (a neighbour taken in, a label running along the colon) warn.
# - liver: craniocaudal span 14.0 +- 1.7 cm at the midclavicular line (Kratzer et al., J Ultrasound Med
#   2003;22(11):1155-1161, 2080 adults); 30 cm along any axis is about twice its usual extent.
# - kidney: length 11.2 cm (left) and 10.9 cm (right), SD about 1 cm, width 5-6 cm (Emamian et al.,
#   AJR 1993;160(1):83-86, 665 adults); 16 cm head to foot and 12 cm across leave room for a dilated pelvis.
# - spleen: up to about 12-13 cm long in adults; beyond 20 cm is massive splenomegaly or a neighbour taken in.
_MAX_EXTENT_MM = {
    "liver": (300.0, 300.0, 300.0),
    "right_kidney": (120.0, 120.0, 160.0),
    "left_kidney": (120.0, 120.0, 160.0),
    "spleen": (200.0, 200.0, 200.0),
}
MAX_EXTENT_MM: dict[str, tuple[float, float, float]] = {organ.name: _MAX_EXTENT_MM[organ.name] for organ in ORGANS}
"""Plausible maximum extent (mm) of every organ along world R-L, A-P and S-I, keyed by organ name."""

_AXIS_PHRASES = ("from side to side", "from front to back", "from head to foot")

LOW_CONFIDENCE = 0.93
"""An organ found with a confidence below this is warned about. Above the not-found threshold (0.90,
``inference/presence.py``): the default model measured 0.96-0.98 on whole real organs, and 0.90-0.93 both on
real organs in thick-slice or cut scans and on organs drawn where there is none."""

LATERALITY_PAIRS: tuple[tuple[str, str], ...] = (("right_kidney", "left_kidney"), ("liver", "spleen"))
"""(organ on the patient's right, organ on the patient's left) pairs checked against each other."""

BODY_HU = -500.0
"""CT voxels above this HU are the body (and the table) when the CT gives the midline."""

CUT_SHARE, ONE_SIDED_RATIO = 0.3, 3.0
"""The scan holds one side of the body when at least ``CUT_SHARE`` of one side face of the scan (the slices with body) is
body, and ``ONE_SIDED_RATIO`` times more than of the other: a cut through the trunk, not the flank or an arm at the edge.
Then the body's centroid is not its midline, and a lone organ is not judged against it. Measured on the sample CT:
0.12 and 0.01 as it is, 0.82 and 0.01 cut at its midline, 0.12 and 0.76 cut 60 mm left of it."""


def qa_report(labels: Image, ct: Image | None = None, measurements: dict[str, dict] | None = None, mirror: dict | None = None) -> dict:
    """Volumes, extents, confidence and laterality of a labelmap (integer organ ids, shape (I, J, K)).

    measurements: ``summary.organ_measurements(labels, ct)`` when the caller has it already:
    its ``volume_ml`` are the volumes judged and reported (so that a summary states each volume
    once, and the voxels are not counted again); without it the organs' voxels are counted here.
    Where an organ's entry also has ``confidence`` (the segment command adds it, with ``reason``
    for an organ not found), a confidence below ``LOW_CONFIDENCE`` is warned about and a missing
    organ's warning gives the reason.

    Each organ's extent along the world axes R-L, A-P and S-I (mm) is that of its voxels' bounding
    box, edge to edge (for an oblique grid, of the box's corners), compared with ``MAX_EXTENT_MM``.

    When ``ct`` shares the labelmap's grid, each organ's largest region of fluid density
    (``fluid.fluid_region``) is reported and warned about.

    For each pair of ``LATERALITY_PAIRS`` whose organs are both present, the right-side organ's
    centroid must lie at a larger world x (further to the patient's right) than the left-side
    one's. When only one organ of a pair is present, its centroid is compared with the body's
    midline instead: the x of the centroid of the CT's voxels above ``BODY_HU`` when ``ct`` is
    given (any grid), else the x of the centre of the labelmap's field of view. When the CT cuts the
    body on one side only (``CUT_SHARE``), the midline is unknown (None) and only pairs are checked.

    mirror: the prediction's mirror check (``inference.mirror_check.MirrorCheck.summary()``) when the
    caller has one; when its "header_may_be_mirrored" is true, the first warning says so. Laterality
    alone cannot: with the header mirrored the network draws each organ at the side it expects it.

    Returns {"volumes": {organ: {"volume_ml", "typical_range_ml", "within", "touches_edge"}},
    "extents": {organ: {"extent_mm": [R-L, A-P, S-I] or None, "max_extent_mm", "within" (None
    when absent)}}, "low_confidence_below": LOW_CONFIDENCE, "laterality": {"midline_x_mm",
    "midline_from", "centroids_ras_mm": {organ: [x, y, z] or None}, "checks": [{"rule", "ok",
    "x_mm"}], "ok": all checks pass (None without any check)}, "fluid_regions": {organ: {"volume_ml", "mean_hu",
    "organ_hu"} or None (none, or no CT on the grid)}, "mirror_check": mirror (None without), "warnings": [sentences]}.
    """
    boxes = bounding_boxes(labels.array)
    volumes, extents, centroids, fluid, warnings = {}, {}, {}, {}, []
    judge_fluid = ct is not None and ct.same_grid(labels)
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
        extents[organ.name] = _extent_check(organ.name, box, labels.affine)
        measured = measurements[organ.name] if measurements is not None else {}
        warnings += _organ_warnings(organ.title.lower(), volumes[organ.name], extents[organ.name], measured)
        fluid[organ.name] = fluid_region(mask, ct.array[box], labels.spacing) if judge_fluid and box is not None else None
        if fluid[organ.name] is not None:
            warnings.append(fluid_warning(organ.title.lower(), fluid[organ.name]))
    midline_x, midline_from = _midline_x(labels, ct)
    findings = _laterality_checks({name: c[0] for name, c in centroids.items() if c is not None}, midline_x)
    warnings += [warning for check, warning in findings if not check["ok"]]
    if mirror is not None and mirror["header_may_be_mirrored"]:
        warnings.insert(0, _mirror_warning(mirror["liver_confidence"]))
    checks = [check for check, _ in findings]
    return {
        "volumes": volumes,
        "extents": extents,
        "low_confidence_below": LOW_CONFIDENCE,
        "laterality": {
            "midline_x_mm": midline_x,
            "midline_from": midline_from,
            "centroids_ras_mm": {name: None if c is None else [round(v, 1) for v in c] for name, c in centroids.items()},
            "checks": checks,
            "ok": all(check["ok"] for check in checks) if checks else None,
        },
        "fluid_regions": fluid,
        "mirror_check": mirror,
        "warnings": warnings,
    }


def _organ_warnings(title: str, volume: dict, extent: dict, measured: dict) -> list[str]:
    """Warnings about one organ from its "volumes" and "extents" entries and its summary entry
    (``measured``: "confidence", and "reason" when not found; may be empty)."""
    if extent["extent_mm"] is None:
        reason = measured.get("reason")
        return [f"No {title} was found: {reason}." if reason else f"No {title} was found."]
    warnings = []
    if not volume["within"]:
        low, high = volume["typical_range_ml"]
        edge = "; it touches the edge of the image, so it may be only partly in the field of view" if volume["touches_edge"] else ""
        warnings.append(f"The {title} volume, {volume['volume_ml']:.0f} mL, is outside the typical adult range of {low:.0f}-{high:.0f} mL{edge}.")
    for size, limit, phrase in zip(extent["extent_mm"], extent["max_extent_mm"], _AXIS_PHRASES):
        if size > limit:
            warnings.append(f"The {title} spans {size:.0f} mm {phrase}, more than the {limit:.0f} mm plausible for an adult {title}; "
                            "it may have taken in a neighbouring structure.")
    confidence = measured.get("confidence")
    if confidence is not None and confidence < LOW_CONFIDENCE:
        warnings.append(f"The network's confidence in the {title} is {confidence:.3f}, below {LOW_CONFIDENCE:.2f}: check that it is the {title}.")
    return warnings


def _mirror_warning(liver_confidence: dict) -> str:
    """The warning of a mirror check whose liver is more confident mirrored ({"as_given", "mirrored"}: confidences or None)."""
    as_given = "no liver drawn" if liver_confidence["as_given"] is None else f"{liver_confidence['as_given']:.3f}"
    return (f"The image's header may be mirrored left-right: the network finds the liver with more confidence in the scan "
            f"mirrored left-right ({liver_confidence['mirrored']:.3f}) than in the scan as given ({as_given}), so the labels "
            "may lie on the wrong organs; check the image orientation before trusting left and right.")


def _extent_check(name: str, box: tuple[slice, ...] | None, affine: np.ndarray) -> dict:
    """{"extent_mm": [R-L, A-P, S-I] or None, "max_extent_mm", "within"} of an organ's voxel bounding box."""
    limits = list(MAX_EXTENT_MM[name])
    if box is None:
        return {"extent_mm": None, "max_extent_mm": limits, "within": None}
    edges = [(s.start - 0.5, s.stop - 0.5) for s in box]  # voxel faces, not centres
    corners = np.array([[i, j, k] for i in edges[0] for j in edges[1] for k in edges[2]])
    world = corners @ affine[:3, :3].T
    extent = [round(float(v), 1) for v in world.max(axis=0) - world.min(axis=0)]
    return {"extent_mm": extent, "max_extent_mm": limits, "within": all(e <= m for e, m in zip(extent, limits))}


def _laterality_checks(x_mm: dict[str, float], midline_x: float | None) -> list[tuple[dict, str]]:
    """One (check, warning if it fails) per pair with an organ present (with one organ only when the midline is known);
    check = {"rule", "ok", "x_mm"} (world x, RAS mm)."""
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
        elif midline_x is not None and (right_name in x_mm or left_name in x_mm):
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


def _midline_x(labels: Image, ct: Image | None) -> tuple[float | None, str]:
    """World x (RAS mm) of the body's midline and where it comes from; None when the scan cuts the body on one
    side only (a half-body field of view), where the body's centroid lies off the midline."""
    if ct is not None:
        array, affine, _ = canonical(ct)  # axis 0 runs from the patient's left (index 0) to the right
        body = np.asarray(array) > BODY_HU
        slices = body.any(axis=(0, 1))
        if slices.any():
            left, right = (float(body[index][:, slices].mean()) for index in (0, -1))  # share of each side face that is body
            if max(left, right) >= CUT_SHARE and max(left, right) >= ONE_SIDED_RATIO * min(left, right):
                side = "right" if right > left else "left"
                return None, (f"unknown: the scan cuts through the body on the patient's {side} side ({max(left, right):.0%} of that "
                              f"side's face is body, {min(left, right):.0%} of the other's), so the body's centre is not its midline")
            return _tidy(_centroid_ras(body, (0, 0, 0), affine)[0]), "centroid of the body in the CT"
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
