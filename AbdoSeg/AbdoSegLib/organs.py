"""The organ table: the one place that knows label ids, names, colours and terminology.

Label ids: 0 background, 1 liver, 2 right kidney, 3 left kidney, 4 spleen.
"Right" and "left" are the patient's. Terminology codes come from the DICOM master list
that 3D Slicer uses for segmentations (category SCT 123037004 "Anatomical Structure").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BACKGROUND = 0

TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
CATEGORY = ("SCT", "123037004", "Anatomical Structure")


@dataclass(frozen=True)
class Organ:
    """One segmented organ.

    label: voxel value in every labelmap; name: machine name (file names, JSON keys);
    title: human name (segment names in Slicer); color: RGB in 0..1;
    type_code / modifier_code: (coding scheme, code value, code meaning).
    """

    label: int
    name: str
    title: str
    color: tuple[float, float, float]
    type_code: tuple[str, str, str]
    modifier_code: tuple[str, str, str] | None = None

    @property
    def terminology(self) -> dict:
        """The terminology entry as a slicerio-style dict."""
        entry = {
            "contextName": TERMINOLOGY_CONTEXT,
            "category": list(CATEGORY),
            "type": list(self.type_code),
            "anatomicContextName": ANATOMIC_CONTEXT,
        }
        if self.modifier_code:
            entry["typeModifier"] = list(self.modifier_code)
        return entry

    @property
    def terminology_string(self) -> str:
        """Slicer's serialised terminology entry (the ``TerminologyEntry`` segment tag)."""
        modifier = "^".join(self.modifier_code) if self.modifier_code else "^^"
        return "~".join(
            [
                TERMINOLOGY_CONTEXT,
                "^".join(CATEGORY),
                "^".join(self.type_code),
                modifier,
                ANATOMIC_CONTEXT,
                "^^",
                "^^",
            ]
        )


def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (round(r / 255, 6), round(g / 255, 6), round(b / 255, 6))


_KIDNEY = ("SCT", "64033007", "Kidney")

# Colours: Slicer's recommended terminology colours; the left kidney gets a lighter shade
# of the kidney colour so that the two sides can be told apart in a picture.
ORGANS: tuple[Organ, ...] = (
    Organ(1, "liver", "Liver", _rgb(221, 130, 101), ("SCT", "10200004", "Liver")),
    Organ(2, "right_kidney", "Right kidney", _rgb(185, 102, 83), _KIDNEY, ("SCT", "24028007", "Right")),
    Organ(3, "left_kidney", "Left kidney", _rgb(226, 160, 128), _KIDNEY, ("SCT", "7771000", "Left")),
    Organ(4, "spleen", "Spleen", _rgb(157, 108, 162), ("SCT", "78961009", "Spleen")),
)

NUM_CLASSES = len(ORGANS) + 1
"""Background plus the organs: the number of network output channels."""

ORGAN_NAMES: tuple[str, ...] = tuple(organ.name for organ in ORGANS)

# The label pairs a left-right mirror exchanges.
LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = ((2, 3),)


def organ_by_name(name: str) -> Organ:
    """The organ called ``name`` (machine name such as ``right_kidney``)."""
    for organ in ORGANS:
        if organ.name == name:
            return organ
    raise KeyError(f"no organ called {name!r}; the organs are {', '.join(ORGAN_NAMES)}")


def organ_from_name(name: str) -> Organ | None:
    """The organ a structure name denotes, or None: the organ's title or machine name in any case,
    word order and separator ('Right kidney', 'right_kidney', 'kidney_right', 'RIGHT KIDNEY').

    The one name matcher of AbdoSeg: Slicer segments, .seg.nrrd segments and training label tables alike.
    """
    words = _words(name)
    return next((organ for organ in ORGANS if words in (_words(organ.name), _words(organ.title))), None)


def _words(name: str) -> frozenset[str]:
    return frozenset(re.split(r"[\s_\-]+", name.strip().lower())) - {""}


def label_table() -> list[dict]:
    """The table as JSON-able rows, as stored in a model bundle."""
    return [{"label": organ.label, "name": organ.name} for organ in ORGANS]
