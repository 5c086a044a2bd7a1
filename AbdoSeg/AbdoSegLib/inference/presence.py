"""Is each organ the network drew really there? Confidence and size decide; an organ that is not is
reported "not found", with the reason, and never drawn.

Confidence of an organ: the mean of the network's softmax probability of that organ over the organ's
voxels on the model grid after clean-up (``cleanup.clean_labels``), in [0, 1]. The model grid is
small (3 mm voxels), so no full-resolution probability volume is needed. (The share of the organ's
voxels with p > 0.9 was measured too and separated present from absent no better.)

An organ is not found when
- the network labels no voxel of it, or
- its confidence is below ``MIN_CONFIDENCE``, or
- it lies wholly inside the scan and its volume on the model grid is below ``MIN_WHOLE_VOLUME_ML``, the
  smallest plausible whole adult organ. An organ that touches the edge of the scan may be a fragment of
  any size: it is kept when confident enough. The edge is a face of the image or, where a scanner pads
  the corners of a circular field of view (``OUTSIDE_FIELD_HU``), the rim of that circle.

Position is judged by the QA (laterality, ``analysis/qa.py``) and the mirror check (``mirror_check.py``)
rather than here: a scan whose header mirrors the patient would otherwise lose real organs.

Measured with the default bundle (abdoseg-vnet-0.5) on scans with and without each organ: "in scan" is
the reference volume in the scan (mL; - absent, ? present but not labelled), "drawn" what the network
labels after clean-up (mL on the model grid), "edge" whether that touches a face of the scan. Crops are of
the sample CT (122x101x112 voxels of 3 mm, RAS: x[62:] keeps the patient's right, y[:45] the back, z[95:]
the top) unless named; z[:60] ends 18 mm below the kidneys' lower poles (pelvis only). No real chest-only
CT was at hand: every scan here starts at or below the liver dome. Dice is on the crop.

    scan               organ         in scan  drawn  confidence  edge  decision
    sample             liver            1126   1102    0.973      yes   found, Dice 0.94
    sample             right kidney      193    216    0.984      no    found, Dice 0.91
    sample             left kidney       137    137    0.976      no    found, Dice 0.94
    sample             spleen            261    241    0.979      yes   found, Dice 0.95
    sample z[95:]      right kidney       23     16    0.937      yes   found, Dice 0.83
    sample z[95:]      left kidney        32     26    0.943      yes   found, Dice 0.87
    sample y[:45]      liver             230    205    0.955      yes   found, Dice 0.92
    sample z[100:]     liver             638    517    0.928      yes   found, Dice 0.87
    sample z[100:]     right kidney        2      1    0.882      yes   not found
    sample z[104:]     spleen            103     35    0.904      yes   found, Dice 0.50
    ts_dicom           liver             699    588    0.942      yes   found, Dice 0.89
    ts_dicom           spleen            249    197    0.956      yes   found, Dice 0.86
    msd_spleen_8       spleen            756    805    0.974      no    found, Dice 0.94
    msd_spleen_8       liver               ?   1392    0.926      yes   found (7.5 mm slices)
    ircad_17           liver            1861   1924    0.977      no    found, Dice 0.94
    ircad_17 z[:40]    liver             193    202    0.962      yes   found, Dice 0.89
    ircad_17 x[380:]   left kidney         ?     15    0.863      yes   not found (a sliver)
    sample z[:60]      liver               -     55    0.856      yes   not found
    sample z[:60]      right kidney        -     42    0.886      no    not found
    sample z[:60]      left kidney         -     39    0.842      no    not found
    sample z[:60]      spleen              -     16    0.700      no    not found
    sample z[:50]      liver               -     95    0.855      no    not found
    sample z[:50]      spleen              -     47    0.839      no    not found
    sample z[:66]      liver               -     93    0.925      yes   FOUND (absent)
    sample z[:66]      left kidney         -     41    0.940      no    not found (size)
    sample x[62:]      left kidney         -     33    0.931      no    not found (size)
    sample x[66:]      left kidney         -     35    0.892      no    not found
    sample x[:60]      liver             136    129    0.881      no    not found (drawn elsewhere)
    sample x[85:]      right kidney       76     62    0.894      yes   not found (drawn elsewhere)
    sample z[:80]      left kidney        25     59    0.965      no    FOUND (Dice 0.00)
    sample z[30:90]    left kidney        76     72    0.968      no    FOUND (Dice 0.00)
    sample z[30:90]    spleen             29     32    0.903      yes   FOUND (Dice 0.00)
    msd_spleen_8 z[:7] spleen              -     75    0.911      yes   FOUND (absent)

Synthetic CT painted by the training package's generator from maps without the organ gave the same
picture: a pelvis (TotalSegmentator s0000) drew 818 mL of liver at 0.891 (not found) and 353 mL of spleen
at 0.940 (FOUND); a chest above the liver (3D-IRCADb-01 19) drew 270 mL of spleen at 0.927 (FOUND).

Real organs measured 0.96-0.98 when whole and 0.90-0.97 when cut by the edge, bar slivers (1 and 15 mL at
0.88 and 0.86); what the network draws where an organ is absent measured 0.56-0.97, most of it below 0.90
and, wholly inside the scan, at most 47 mL of spleen, 45 mL of kidney and 137 mL of liver. The thresholds
below keep every real organ and cut organ measured except those slivers, and drop most of what is absent;
yet this model's confidence does not separate the two with a margin: a confident organ-sized blob where
the organ is absent (the FOUND rows) is still drawn, with the QA's low-confidence or extent warning where
one applies. Re-measure these rows when the default model changes.
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
"""Below this confidence an organ is not found, whatever its size (absent organs measured mostly 0.56-0.89;
real ones at least 0.90, and 0.96 when whole)."""

# The smallest plausible whole adult organ (mL), for an organ that lies wholly inside the scan. About half
# the smallest normal volumes (liver 594 mL: Feng et al., World J Gastroenterol 2017;23(27):4968-4977, CT of
# 369 adults; spleen 107 mL: Prassopoulos et al., Eur Radiol 1997;7(2):246-248; kidney about 85 mL, a 9 cm
# kidney, two SD below the 11 cm mean length of Emamian et al., AJR 1993;160(1):83-86) and above what the
# network drew wholly inside scans without the organ (liver 137, kidney 45, spleen 47 mL). A severely
# atrophic kidney under 50 mL is reported not found, with this reason.
_MIN_WHOLE_ML = {"liver": 300.0, "right_kidney": 50.0, "left_kidney": 50.0, "spleen": 50.0}
MIN_WHOLE_VOLUME_ML: dict[str, float] = {organ.name: _MIN_WHOLE_ML[organ.name] for organ in ORGANS}
"""Smallest plausible volume (mL) of each organ when it does not touch the edge of the scan."""

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
                    outside: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, OrganPresence]]:
    """Keep the organs that are there.

    probabilities: (C, X, Y, Z) float32 softmax on the model grid; cleaned: (X, Y, Z) uint8 cleaned labels on
    it; voxel_volume_ml: volume of one model-grid voxel; outside: ``outside_field`` of the scan. Returns (a
    copy of cleaned with every organ that is not found set to background, {organ name: OrganPresence} in the
    order of the organ table).
    """
    kept = cleaned.copy()
    decisions = {}
    for organ in ORGANS:
        mask = cleaned == organ.label
        decision = _decide(organ.name, organ.title.lower(), probabilities[organ.label], mask, voxel_volume_ml, outside)
        if not decision.found:
            kept[mask] = BACKGROUND
        decisions[organ.name] = decision
    return kept, decisions


def organ_confidence(probability: torch.Tensor, mask: np.ndarray) -> float:
    """Mean of ``probability`` (X, Y, Z) over a non-empty boolean ``mask`` (X, Y, Z)."""
    return float(probability[torch.from_numpy(mask)].double().mean())


def touches_edge(mask: np.ndarray, outside: np.ndarray | None = None) -> bool:
    """True when a boolean (X, Y, Z) mask has a voxel on a face of its array, or within ``_RIM_VOXELS``
    of a voxel of ``outside`` (same shape: the padding beyond a circular field of view)."""
    if any(np.take(mask, index, axis=axis).any() for axis in range(3) for index in (0, -1)):
        return True
    return outside is not None and bool((ndimage.binary_dilation(mask, iterations=_RIM_VOXELS) & outside).any())


def _decide(name: str, title: str, probability: torch.Tensor, mask: np.ndarray, voxel_volume_ml: float,
            outside: np.ndarray | None) -> OrganPresence:
    voxels = int(np.count_nonzero(mask))
    if not voxels:
        return OrganPresence(NOT_FOUND, None, 0.0, False, f"the network labelled no voxel as {title}")
    confidence, volume_ml, edge = organ_confidence(probability, mask), voxels * voxel_volume_ml, touches_edge(mask, outside)
    if confidence < MIN_CONFIDENCE:
        reason = f"what the network drew ({volume_ml:.0f} mL) has a confidence of {confidence:.3f}, below the {MIN_CONFIDENCE:.2f} required"
        return OrganPresence(NOT_FOUND, confidence, volume_ml, edge, reason)
    smallest = MIN_WHOLE_VOLUME_ML[name]
    if not edge and volume_ml < smallest:
        reason = (f"what the network drew ({volume_ml:.0f} mL, confidence {confidence:.3f}) lies wholly inside the scan "
                  f"yet is smaller than the smallest plausible {title} ({smallest:.0f} mL)")
        return OrganPresence(NOT_FOUND, confidence, volume_ml, edge, reason)
    return OrganPresence(FOUND, confidence, volume_ml, edge, None)
