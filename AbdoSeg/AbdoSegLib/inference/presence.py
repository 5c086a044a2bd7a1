"""Is each organ the network drew really there? Confidence and size decide; an organ that is not is
reported "not found", with the reason, and never drawn.

Confidence of an organ: the mean of the network's softmax probability of that organ over the organ's
voxels on the model grid after clean-up (``cleanup.clean_labels``), in [0, 1]. The model grid is
small (3 mm voxels), so no full-resolution probability volume is needed. (The share of the organ's
voxels with p > 0.9 was measured too and separated present from absent no better.)

An organ is not found when
- the network labels no voxel of it, or
- its confidence is below ``MIN_CONFIDENCE``, or
- its median HU is above ``MAX_MEDIAN_HU``, denser than any organ's enhancing tissue (bone), or
- it lies wholly inside the scan and its volume on the model grid is below ``MIN_WHOLE_VOLUME_ML``, the
  smallest plausible whole adult organ. An organ that touches the edge of the scan may be a fragment of
  almost any size: it is kept when confident enough and at least ``MIN_FRAGMENT_VOXELS`` model voxels. The edge is a face of the image or, where a scanner pads
  the corners of a circular field of view (``OUTSIDE_FIELD_HU``), the rim of that circle, or
- it is the spleen and no other organ is found (``NEVER_ALONE``), or
- it is a kidney or the spleen cut by the scan's lowest slice and by no other edge of the scan, and the liver
  is not found (``UNDER_THE_LIVER``).

Position is judged by the QA (laterality, ``analysis/qa.py``) and the mirror check (``mirror_check.py``)
rather than here: a scan whose header mirrors the patient would otherwise lose real organs.

Measured with abdoseg-vnet-0.9 (the first stage of the default, 1.1) on scans with and without each organ, by
``python Training/scripts/presence_table.py`` (all its rows here): "in scan" is the
reference volume in the scan (mL; - absent, ? present but not labelled), "drawn" what the network labels
after clean-up (mL on the model grid), "edge" whether that touches a face of the scan. Crops are of the
sample CT (122x101x112 voxels of 3 mm, RAS: x[62:] keeps the patient's right, y[:45] the back, z[95:]
the top) unless named; z[:60] ends 18 mm below the kidneys' lower poles (pelvis only). msd_spleen_8's
header is mirrored left-right (see ``mirror_check``). s0000 (a pelvis) and the chest above the liver of
3D-IRCADb-01 patient 19 are synthetic CT painted from their anatomy maps with a fixed seed. No real
chest-only or pelvis-only CT was at hand. Dice is on the crop.

    scan                  organ          in scan  drawn  confidence  edge  decision
    sample                liver             1126   1120       0.968   yes  found, Dice 0.95
    sample                right_kidney       193    221       0.987    no  found, Dice 0.91
    sample                left_kidney        137    141       0.977    no  found, Dice 0.94
    sample                spleen             261    242       0.970   yes  found, Dice 0.95
    sample z[95:]         liver              840    844       0.977   yes  found, Dice 0.96
    sample z[95:]         right_kidney        23     23       0.992   yes  found, Dice 0.98
    sample z[95:]         left_kidney         32     32       0.984   yes  found, Dice 0.97
    sample z[95:]         spleen             196    172       0.974   yes  found, Dice 0.92
    sample y[:45]         liver              230    196       0.945   yes  found, Dice 0.91
    sample y[:45]         right_kidney       146    147       0.981   yes  found, Dice 0.93
    sample y[:45]         left_kidney        121    126       0.986   yes  found, Dice 0.95
    sample y[:45]         spleen             220    201       0.964   yes  found, Dice 0.94
    sample z[100:]        liver              638    658       0.981   yes  found, Dice 0.96
    sample z[100:]        right_kidney         2      2       0.992   yes  found, Dice 0.95
    sample z[100:]        left_kidney          7      8       0.978   yes  found, Dice 0.97
    sample z[100:]        spleen             151    131       0.977   yes  found, Dice 0.91
    sample z[104:]        liver              442    450       0.982   yes  found, Dice 0.97
    sample z[104:]        right_kidney         -      1       0.789   yes  not found
    sample z[104:]        left_kidney          0      0       0.820   yes  not found
    sample z[104:]        spleen             103     89       0.978   yes  found, Dice 0.91
    sample z[:60]         liver                -      0       0.742    no  not found
    sample z[:60]         right_kidney         -      0       0.622    no  not found
    sample z[:60]         left_kidney          -      0       0.637   yes  not found
    sample z[:60]         spleen               -     35       0.774    no  not found
    sample z[:50]         liver                -      3       0.717   yes  not found
    sample z[:50]         right_kidney         -      0       0.587   yes  not found
    sample z[:50]         left_kidney          -      4       0.782    no  not found
    sample z[:50]         spleen               -     13       0.782    no  not found
    sample z[:66]         liver                -     40       0.808   yes  not found
    sample z[:66]         right_kidney         -      0       0.659   yes  not found
    sample z[:66]         left_kidney          -      6       0.812    no  not found
    sample z[:66]         spleen               -     20       0.770    no  not found
    sample x[62:]         liver              963    936       0.965   yes  found, Dice 0.94
    sample x[62:]         right_kidney       193    218       0.977    no  found, Dice 0.91
    sample x[62:]         left_kidney          -      2       0.707   yes  not found
    sample x[66:]         liver              916    918       0.968   yes  found, Dice 0.95
    sample x[66:]         right_kidney       193    218       0.980    no  found, Dice 0.91
    sample x[66:]         left_kidney          -      4       0.764   yes  not found
    sample x[66:]         spleen               -      0       0.590    no  not found
    sample x[:60]         liver              136    114       0.940   yes  found, Dice 0.87
    sample x[:60]         left_kidney        137    137       0.972    no  found, Dice 0.94
    sample x[:60]         spleen             261    241       0.968   yes  found, Dice 0.94
    sample x[85:]         liver              575    596       0.960   yes  found, Dice 0.95
    sample x[85:]         right_kidney        76     52       0.933   yes  found, Dice 0.81
    sample x[85:]         spleen               -      1       0.570   yes  not found
    sample z[:80]         liver               42     69       0.889   yes  not found
    sample z[:80]         right_kidney        68     68       0.969   yes  found, Dice 0.95
    sample z[:80]         left_kidney         25     91       0.930   yes  found, Dice 0.40
    sample z[:80]         spleen               -      7       0.779    no  not found
    sample z[30:90]       liver              164    178       0.947   yes  found, Dice 0.85
    sample z[30:90]       right_kidney       136    150       0.977   yes  found, Dice 0.86
    sample z[30:90]       left_kidney         76    119       0.929   yes  found, Dice 0.72
    sample z[30:90]       spleen              29     22       0.953   yes  found, Dice 0.87
    ts_dicom              liver              699    716       0.988   yes  found, Dice 0.98
    ts_dicom              right_kidney         ?      0       0.660    no  not found
    ts_dicom              spleen             249    246       0.988   yes  found, Dice 0.96
    msd_spleen_8          liver                ?   1843       0.908   yes  found
    msd_spleen_8          right_kidney         ?    287       0.948   yes  found
    msd_spleen_8          left_kidney          ?     67       0.884    no  not found
    msd_spleen_8          spleen             756    797       0.972    no  found, Dice 0.93
    msd_spleen_8 z[:7]    liver                ?    249       0.939   yes  found
    msd_spleen_8 z[:7]    right_kidney         ?    114       0.988   yes  found
    msd_spleen_8 z[:7]    left_kidney          ?      5       0.843   yes  not found
    msd_spleen_8 z[:7]    spleen               -    147       0.878   yes  not found
    ircad_17              liver             1861   1879       0.975    no  found, Dice 0.94
    ircad_17              right_kidney         ?    211       0.979    no  found
    ircad_17              left_kidney          ?    219       0.979   yes  found
    ircad_17              spleen               ?    175       0.980    no  found
    ircad_17 z[:40]       liver              193    195       0.976   yes  found, Dice 0.94
    ircad_17 z[:40]       right_kidney         ?     89       0.988   yes  found
    ircad_17 z[:40]       left_kidney          ?    127       0.980   yes  found
    ircad_17 z[:40]       spleen               ?      0       0.409    no  not found
    ircad_17 x[380:]      right_kidney         ?      6       0.816   yes  not found
    ircad_17 x[380:]      left_kidney          ?     55       0.946   yes  found
    ircad_17 x[380:]      spleen               ?     91       0.977   yes  found
    s0000 portal_v        liver                -     50       0.782    no  not found
    s0000 portal_v        right_kidney         -     17       0.937    no  not found
    s0000 portal_v        left_kidney          -     93       0.950    no  not found
    s0000 portal_v        spleen               -    236       0.915   yes  not found
    s0000 unenhanc        liver                -     54       0.794    no  not found
    s0000 unenhanc        right_kidney         -     17       0.937    no  not found
    s0000 unenhanc        left_kidney          -     95       0.952    no  not found
    s0000 unenhanc        spleen               -    204       0.893   yes  not found
    ircad_19 portal_v z[92:]liver                -      3       0.765    no  not found
    ircad_19 portal_v z[92:]right_kidney         ?      0       0.628    no  not found
    ircad_19 portal_v z[92:]left_kidney          ?      0       0.530    no  not found
    ircad_19 portal_v z[92:]spleen               ?     18       0.723   yes  not found
    ircad_19 unenhanc z[92:]liver                -      5       0.778    no  not found
    ircad_19 unenhanc z[92:]right_kidney         ?      0       0.657    no  not found
    ircad_19 unenhanc z[92:]left_kidney          ?      1       0.526    no  not found
    ircad_19 unenhanc z[92:]spleen               ?     19       0.732   yes  not found

Real organs measured 0.94-0.99 when whole (the unlabelled liver of the mirrored msd_spleen_8: 0.91) and
0.89-0.99 when cut by the edge of the scan; what the network draws where an organ is absent measured 0.57-0.95.
Raising ``MIN_CONFIDENCE`` would lose real cut organs before it dropped the confident absent ones: on a synthetic
pelvis the network still labels 236 mL of "spleen" on the gluteal muscles at 0.915 (not found: no other organ is,
``NEVER_ALONE``) and 93 mL of "left kidney" on the pelvic bone at 0.95 (not found: ``MAX_MEDIAN_HU``). The rules
keep every real organ measured except one fragment cut by the edge (sample z[:80]: 42 mL of liver drawn as 69 at
0.889) and drop every absent organ. A cut left kidney can be over-drawn and kept (z[:80]: 25 mL drawn as 91,
Dice 0.40; z[30:90]: Dice 0.72, where abdoseg-vnet-0.7 measured 0.92).
Re-measure these rows when the default model changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..image import Image
from ..model.preprocessing import ModelGrid, canonical, resample
from ..organs import BACKGROUND, ORGANS

MIN_CONFIDENCE = 0.90
"""Below this confidence an organ is not found, whatever its size (abdoseg-vnet-0.9: absent organs measured
mostly 0.57-0.88; real ones 0.94 and more when whole, 0.89-0.99 when cut by the edge)."""

# The smallest plausible whole adult organ (mL), for an organ that lies wholly inside the scan. About half
# the smallest normal volumes (liver 594 mL: Feng et al., World J Gastroenterol 2017;23(27):4968-4977, CT of
# 369 adults; spleen 107 mL: Prassopoulos et al., Eur Radiol 1997;7(2):246-248; kidney about 85 mL, a 9 cm
# kidney, two SD below the 11 cm mean length of Emamian et al., AJR 1993;160(1):83-86). abdoseg-vnet-0.7 drew
# wholly inside scans without the organ, at 0.90 or more, only 21-22 mL of kidney, and, in a synthetic pelvis,
# 93 mL of "left kidney" on bone: no size that keeps real small kidneys would drop it. A severely atrophic
# kidney under 50 mL is reported not found, with this reason.
_MIN_WHOLE_ML = {"liver": 300.0, "right_kidney": 50.0, "left_kidney": 50.0, "spleen": 50.0}
MIN_WHOLE_VOLUME_ML: dict[str, float] = {organ.name: _MIN_WHOLE_ML[organ.name] for organ in ORGANS}
"""Smallest plausible volume (mL) of each organ when it does not touch the edge of the scan."""

MAX_MEDIAN_HU = 300.0
"""Above this median (HU, on the model grid) what the network drew is not liver, kidney or spleen tissue in any
phase: enhanced parenchyma measures up to about 150 HU (liver, portal-venous), 200-250 HU (renal cortex and
spleen, arterial); a kidney's collecting system full of excreted contrast is denser, but a small part of the
organ, which the median ignores. Cancellous and cortical bone measure about 300-1000 HU and more. Not fitted:
abdoseg-vnet-0.7 drew a "left kidney" of mean 428 HU on the pelvic bone of a synthetic pelvis."""

MIN_FRAGMENT_VOXELS = 8
"""Fewer model voxels than a 2 x 2 x 2 block (0.2 mL at 3 mm) cannot be told from noise at the model's
resolution, even at the edge of the scan (abdoseg-vnet-0.7 drew one confident 0.03 mL voxel of "right kidney"
at the cut of a pelvis-only crop; the smallest real fragment it kept measured 1 mL, 37 voxels)."""

NEVER_ALONE = ("spleen",)
"""Organs never the only one of the four in a scan: the spleen spans the levels of the liver and of the left
kidney's upper half, so any scan through it holds one of them (a far-lateral crop or a huge spleen reaching
the pelvis are the exceptions). Not fitted: abdoseg-vnet-0.8 drew a 260 mL "spleen" at 0.922 on the gluteal
muscles of a synthetic pelvis that holds none of the four organs (0.9: 236 mL at 0.915), and on no scan of the
table above a real spleen alone."""

UNDER_THE_LIVER = ("right_kidney", "left_kidney", "spleen")
"""Organs whose upper part never lies in a scan without the liver: the dome of the liver lies above the upper
poles of both kidneys and of the spleen, so a scan that runs upward from a cut through one of them holds
liver, unless the field of view leaves the liver out: an organ that also touches a side, the top or the rim of
the scan is left alone (ircad_17 x[380:], the patient's left side, holds a left kidney and a spleen cut by the
lowest slice and by the crop, and no liver). Not fitted to a threshold: on the slabs above the four organs of
the validation maps btcv_0033 and btcv_0034 painted at 1.5 mm (portal-venous), abdoseg-vnet-0.9 drew a "left
kidney" of 20 and 5 mL at 0.922 and 0.943 at the back of the slab, cut only by its lowest slice, with no liver
found (``python Training/scripts/organ_free_slabs.py CASE_FOLDER...``)."""

LOWEST_SLICE = (2, 0)
"""The face (axis, index) of the model grid, in canonical (RAS) order, that is the scan's lowest axial slice."""

OUTSIDE_FIELD_HU = -1100.0
"""Voxels below this lie outside the reconstructed field: scanners pad the corners of a circular field of
view with about -2000 or -3024 HU, while air measures -1000 HU."""
_PADDED_SHARE = 0.001  # a scan with fewer padded voxels than this has only noise below OUTSIDE_FIELD_HU
_RIM_VOXELS = 2  # an organ this close (model voxels) to the padding is cut by the rim of the field

FOUND, NOT_FOUND = "found", "not found"


@dataclass(frozen=True)
class OrganPresence:
    """The decision for one organ.

    status: ``FOUND`` or ``NOT_FOUND``; confidence: mean probability in [0, 1] of what the network drew
    (None when it drew nothing); volume_ml: what it drew, on the model grid; touches_edge: whether that
    reaches the edge of the scan (``touches_edge``); reason: why it is not found (a clause), None when found.
    """

    status: str
    confidence: float | None
    volume_ml: float
    touches_edge: bool
    reason: str | None

    @property
    def found(self) -> bool:
        return self.status == FOUND

    def summary(self) -> dict:
        """The entries of ``summary.json``'s organ: status, confidence (None when not found), reason."""
        confidence = round(self.confidence, 3) if self.found else None
        return {"status": self.status, "confidence": confidence, "reason": self.reason}


def outside_field(image: Image, grid: ModelGrid) -> np.ndarray | None:
    """(X, Y, Z) bool on the model grid: voxels mostly outside the reconstructed field (below
    ``OUTSIDE_FIELD_HU``), or None when the scan is not padded (nearly always: its field is the image)."""
    outside = np.asarray(image.array) < OUTSIDE_FIELD_HU
    if np.count_nonzero(outside) < _PADDED_SHARE * outside.size:
        return None
    return (resample(canonical(image.with_array(outside))[0], grid.shape) > 0.5).numpy()


def decide_presence(probabilities: torch.Tensor, cleaned: np.ndarray, voxel_volume_ml: float,
                    outside: np.ndarray | None = None, hu: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, OrganPresence]]:
    """Keep the organs that are there.

    probabilities: (C, X, Y, Z) float32 softmax on the model grid; cleaned: (X, Y, Z) uint8 cleaned labels on
    it; voxel_volume_ml: volume of one model-grid voxel; outside: ``outside_field`` of the scan; hu: (X, Y, Z)
    HU of the network's input (None: the density is not judged). Returns (a
    copy of cleaned with every organ that is not found set to background, {organ name: OrganPresence} in the
    order of the organ table).
    """
    kept = cleaned.copy()
    decisions = {}
    masks = {organ.name: cleaned == organ.label for organ in ORGANS}
    for organ in ORGANS:
        decisions[organ.name] = _decide(organ.name, organ.title.lower(), probabilities[organ.label], masks[organ.name], voxel_volume_ml,
                                        outside, hu)
    for organ in ORGANS:
        decision = decisions[organ.name]
        if (organ.name in UNDER_THE_LIVER and decision.found and not decisions["liver"].found
                and _faces_touched(masks[organ.name]) == {LOWEST_SLICE} and not _on_rim(masks[organ.name], outside)):
            decisions[organ.name] = _not_found(decision, f"is cut by the scan's lowest slice, so the scan runs up past the {organ.title.lower()}'s "
                                                         "upper pole, yet no liver is found there")
    for organ in ORGANS:
        if organ.name in NEVER_ALONE and decisions[organ.name].found and not any(d.found for n, d in decisions.items() if n != organ.name):
            decisions[organ.name] = _not_found(decisions[organ.name], f"is the only organ found, and a scan through the "
                                                                      f"{organ.title.lower()} shows the liver or a kidney too")
        if not decisions[organ.name].found:
            kept[masks[organ.name]] = BACKGROUND
    return kept, decisions


def _not_found(decision: OrganPresence, why: str) -> OrganPresence:
    """A found ``decision`` turned to not found by where it lies among the others; ``why``: a clause that ends the reason."""
    reason = f"what the network drew ({decision.volume_ml:.0f} mL, confidence {decision.confidence:.3f}) {why}"
    return OrganPresence(NOT_FOUND, decision.confidence, decision.volume_ml, decision.touches_edge, reason)


def organ_confidence(probability: torch.Tensor, mask: np.ndarray) -> float:
    """Mean of ``probability`` (X, Y, Z) over a non-empty boolean ``mask`` (X, Y, Z)."""
    return float(probability[torch.from_numpy(mask)].double().mean())


def touches_edge(mask: np.ndarray, outside: np.ndarray | None = None) -> bool:
    """True when a boolean (X, Y, Z) mask has a voxel on a face of its array, or within ``_RIM_VOXELS``
    of a voxel of ``outside`` (same shape: the padding beyond a circular field of view)."""
    return bool(_faces_touched(mask)) or _on_rim(mask, outside)


def _faces_touched(mask: np.ndarray) -> set[tuple[int, int]]:
    """The faces of its array that a boolean (X, Y, Z) mask has a voxel on, as (axis, 0 or -1)."""
    return {(axis, index) for axis in range(3) for index in (0, -1) if np.take(mask, index, axis=axis).any()}


def _on_rim(mask: np.ndarray, outside: np.ndarray | None) -> bool:
    """Whether a boolean (X, Y, Z) mask comes within ``_RIM_VOXELS`` of a voxel of ``outside`` (the padding beyond
    a circular field of view; None: no padding)."""
    return outside is not None and bool((ndimage.binary_dilation(mask, iterations=_RIM_VOXELS) & outside).any())


def _decide(name: str, title: str, probability: torch.Tensor, mask: np.ndarray, voxel_volume_ml: float,
            outside: np.ndarray | None, hu: np.ndarray | None) -> OrganPresence:
    voxels = int(np.count_nonzero(mask))
    if not voxels:
        return OrganPresence(NOT_FOUND, None, 0.0, False, f"the network labelled no voxel as {title}")
    confidence, volume_ml, edge = organ_confidence(probability, mask), voxels * voxel_volume_ml, touches_edge(mask, outside)
    if confidence < MIN_CONFIDENCE:
        reason = f"what the network drew ({volume_ml:.0f} mL) has a confidence of {confidence:.3f}, below the {MIN_CONFIDENCE:.2f} required"
        return OrganPresence(NOT_FOUND, confidence, volume_ml, edge, reason)
    if hu is not None and (median := float(np.median(hu[mask]))) > MAX_MEDIAN_HU:
        reason = (f"what the network drew ({volume_ml:.0f} mL, confidence {confidence:.3f}) has a median of {median:.0f} HU, "
                  f"denser than any {title} tissue ({MAX_MEDIAN_HU:.0f} HU): bone")
        return OrganPresence(NOT_FOUND, confidence, volume_ml, edge, reason)
    smallest = MIN_WHOLE_VOLUME_ML[name]
    if not edge and volume_ml < smallest:
        reason = (f"what the network drew ({volume_ml:.0f} mL, confidence {confidence:.3f}) lies wholly inside the scan "
                  f"yet is smaller than the smallest plausible {title} ({smallest:.0f} mL)")
        return OrganPresence(NOT_FOUND, confidence, volume_ml, edge, reason)
    if voxels < MIN_FRAGMENT_VOXELS:
        reason = (f"what the network drew ({volume_ml:.2f} mL, confidence {confidence:.3f}) is {voxels} model "
                  f"voxel{'s' if voxels > 1 else ''}, fewer than the {MIN_FRAGMENT_VOXELS} the model can resolve")
        return OrganPresence(NOT_FOUND, confidence, volume_ml, edge, reason)
    return OrganPresence(FOUND, confidence, volume_ml, edge, None)
