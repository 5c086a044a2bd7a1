"""Is the image's header mirrored left-right? Ask the network about the scan mirrored.

The default model learned each organ at its side (it was trained without left-right flips). A header
that mirrors the patient in world space (an sform with its x axis negated, say) puts the liver on the
patient's left. The network then drew "liver" on the spleen (93 % and 96 % of its voxels in ts_dicom and
the sample's top 17 slices) and "spleen" on the liver; in the whole sample, both on parts of the liver and
nothing on the spleen. The laterality QA, which trusts the labels, passed. The model grid is in RAS voxel
order, so mirroring it along its first axis undoes such a header: the network then finds the liver with
more confidence than in the scan as given.

Rule: the header may be mirrored when the liver is found (``presence.py``) in the scan mirrored
left-right, at least ``MIN_JUDGED_LIVER_ML``, with a higher confidence than in the scan as given (0 there
when nothing was drawn).

Measured with abdoseg-vnet-0.9 by ``python Training/scripts/mirror_table.py``: the liver's confidence as given |
mirrored (in brackets: not found) and the mirrored liver's volume, on each scan with its header as stored; with
the header mirrored in x (array unchanged, world x negated) the two columns swap exactly, since the network's
input is mirrored exactly. Crops are of the sample CT (122x101x112 voxels of 3 mm, RAS: x[62:] keeps the
patient's right, y[:45] the back, z[:60] the pelvis). msd_spleen_8's stored header mirrors the patient (its
spleen and its liver lie on the wrong sides, as reported for the Decathlon's spleen images: Project-MONAI/model-zoo
issue 766), so there "as stored" is the mirrored scan. msd_spleen_8 and ts_dicom were training cases (as
stored), the sample and ircad_17 (3D-IRCADb-01 patient 17, not in the repository) validation cases.

    scan               as stored | mirrored   mirrored liver mL   rule right as stored and with the header mirrored
    sample             0.968 | (0.897)        261                 yes
    sample z[95:]      0.977 | 0.959          163                 yes
    sample z[100:]     0.981 | (0.877)        164                 yes
    sample y[:45]      0.945 | 0.933          167                 yes
    sample x[62:]      0.965 | (0.763)        107                 yes
    sample x[:60]      0.940 | 0.912          303                 yes (mirrored header: the liver as stored, 114 mL)
    sample x[85:]      0.960 | (0.837)        278                 yes
    sample z[30:90]    0.947 | (0.887)         21                 yes
    sample z[60:95]    0.954 | 0.918           51                 yes
    sample z[:60]      (0.742) | (0.676)        3                 no liver: no warning either way
    sample z[:66]      (0.808) | 0.903         31                 no liver: no warning either way (0.903 > 0.808, but
                                                                  31 mL is below MIN_JUDGED_LIVER_ML)
    sample z[:80]      (0.889) | (0.798)       17                 no liver: no warning either way
    ts_dicom           0.988 | 0.964          282                 yes
    ircad_17           0.975 | 0.915          879                 yes
    msd_spleen_8       0.908 | 0.935         2510                 yes (stored: mirrored)

A margin on the confidences that spared one column would cost the other: the rule has none. The closest calls
are y[:45] (0.012 apart), z[95:] (0.018), ts_dicom (0.024) and the half x[:60] (0.028). The spleen is worse to judge by: where it
is absent the network draws one on the mirrored liver, and msd_spleen_8's spleen, learned as stored, drops
when mirrored. A scan without the liver cannot be judged (kidneys look alike on both sides).

The mirrored pass costs a second network pass (1.8 s of 5.2 s on the 512x512x200 benchmark, 2 cores), so
it is skipped when the scan as given is convincing (``needs_mirrored_pass``): the liver found with at
least ``CONVINCING_LIVER`` and more than ``LIVER_TO_SPLEEN`` times the spleen's volume. It is skipped too
for a network trained with left-right flips (``sides_learned``): it was taught a liver on either side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..organs import LEFT_RIGHT_PAIRS, NUM_CLASSES
from .presence import OrganPresence

LEFT_RIGHT_AXIS = 0  # of the model grid, in RAS voxel order

CONVINCING_LIVER = 0.96
"""A liver found with at least this confidence (whole real livers measured 0.96-0.98, ``presence.py``) and
large next to the spleen needs no mirrored pass."""

LIVER_TO_SPLEEN = 2.0
"""The smallest typical adult liver (800 mL) is twice the largest typical spleen (400 mL, ``analysis/qa.py``);
with the header mirrored, what the network called liver was smaller than what it called spleen."""

MIN_JUDGED_LIVER_ML = 100.0
"""A liver found in the mirrored scan smaller than this (mL; a tip or a dome cut by the scan's edge) is too little
to judge the sides by: abdoseg-vnet-0.9 found 31 mL of "liver" at 0.903 in the mirrored lower abdomen of the
sample (z[:66], no liver), where the header is right; the mirrored msd_spleen_8 liver measured 2510 mL."""

CONVINCING = "the liver is convincing as given"
SIDES_NOT_LEARNED = ("the model's training does not record flip_probability 0: a network trained with left-right "
                     "flips was taught a liver on either side")


@dataclass(frozen=True)
class MirrorCheck:
    """The liver as the network found it in the scan as given and mirrored left-right.

    as_given: the liver's OrganPresence in the scan as given; mirrored: in the scan mirrored left-right,
    or None when that pass did not run; skipped: why it did not (``CONVINCING`` or ``SIDES_NOT_LEARNED``).
    """

    as_given: OrganPresence
    mirrored: OrganPresence | None
    skipped: str | None = None

    @property
    def header_may_be_mirrored(self) -> bool:
        """The liver is found in the mirrored scan, at least ``MIN_JUDGED_LIVER_ML``, with more confidence than
        in the scan as given."""
        if self.mirrored is None or not self.mirrored.found or self.mirrored.volume_ml < MIN_JUDGED_LIVER_ML:
            return False
        return self.mirrored.confidence > (self.as_given.confidence or 0.0)

    def summary(self) -> dict:
        """summary.json's entry: {"ran": whether the mirrored pass ran, "skipped": why not (None when it ran),
        "liver_confidence": {"as_given", "mirrored"} (None where nothing was drawn or the pass did not run),
        "liver_found": {"as_given", "mirrored"}, "header_may_be_mirrored"}."""
        def rounded(decision: OrganPresence | None) -> float | None:
            return None if decision is None or decision.confidence is None else round(decision.confidence, 3)

        return {
            "ran": self.mirrored is not None,
            "skipped": self.skipped,
            "liver_confidence": {"as_given": rounded(self.as_given), "mirrored": rounded(self.mirrored)},
            "liver_found": {"as_given": self.as_given.found, "mirrored": None if self.mirrored is None else self.mirrored.found},
            "header_may_be_mirrored": self.header_may_be_mirrored,
        }


def sides_learned(metadata: dict) -> bool:
    """Whether a bundle's network learned the organs at their side: its training metadata records
    ``flip_probability`` 0 (abdoseg_train's default is 0.5; the default model's is 0)."""
    training = metadata.get("training")
    return isinstance(training, dict) and training.get("flip_probability") == 0


def needs_mirrored_pass(presence: dict[str, OrganPresence]) -> bool:
    """False when the scan as given is convincing: the liver found with at least ``CONVINCING_LIVER`` and
    more than ``LIVER_TO_SPLEEN`` times the volume of the spleen (0 mL when not found)."""
    liver, spleen = presence["liver"], presence["spleen"]
    spleen_ml = spleen.volume_ml if spleen.found else 0.0
    return not (liver.found and liver.confidence >= CONVINCING_LIVER and liver.volume_ml > LIVER_TO_SPLEEN * spleen_ml)


def unmirror(probabilities: torch.Tensor) -> torch.Tensor:
    """(C, X, Y, Z) probabilities of a volume mirrored along ``LEFT_RIGHT_AXIS``, brought back onto the
    volume as given: mirrored back, and the right and left organs' channels exchanged."""
    channels = list(range(NUM_CLASSES))
    for right, left in LEFT_RIGHT_PAIRS:
        channels[right], channels[left] = left, right
    return probabilities.flip(1 + LEFT_RIGHT_AXIS)[channels]


def check_mirror(
    presence: dict[str, OrganPresence],
    volume: torch.Tensor,
    infer: Callable[[torch.Tensor], torch.Tensor],
    judge: Callable[[torch.Tensor], dict[str, OrganPresence]],
    learned_sides: bool,
) -> MirrorCheck:
    """Run the network on ``volume`` mirrored left-right when it ``learned_sides`` (``sides_learned``) and
    the scan ``needs_mirrored_pass``.

    presence: the decisions on the scan as given; volume: (X, Y, Z) network input on the model grid (RAS);
    infer: volume -> (C, X, Y, Z) probabilities; judge: probabilities on the volume as given -> presence
    decisions (clean-up and ``decide_presence`` as for the scan as given).
    """
    liver = presence["liver"]
    if not learned_sides:
        return MirrorCheck(liver, None, SIDES_NOT_LEARNED)
    if not needs_mirrored_pass(presence):
        return MirrorCheck(liver, None, CONVINCING)
    return MirrorCheck(liver, judge(unmirror(infer(volume.flip(LEFT_RIGHT_AXIS))))["liver"])
