"""The label tables of other sets' anatomy maps, and their classes as the project's structures.

An anatomy map of TotalSegmentator v2 (its 117 ``total`` classes), BTCV (13 organs) or AMOS (15
organs) stores that set's class ids; its JSON gives the table as ``classes`` {id: name}. A map is
read only when its table is exactly one of the known ones (same ids, same names), and each class
is translated by its NAME (``CLASS_STRUCTURES``), so that one rule serves every set: liver ->
liver, ``vertebrae_*`` -> bone, ``colon`` -> bowel... Classes the painter has no tissue for
(prostate or uterus, spinal cord, thyroid, brain) become ``body_other``, the unlabelled body.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cached_property

import numpy as np

from AbdoSegLib.organs import ORGAN_NAMES, organ_by_name

from .structures import STRUCTURE_IDS


def _numbered(names: str) -> dict[int, str]:
    return dict(enumerate(names.split(), start=1))


# class_map["total"] of wasserth/TotalSegmentator (totalsegmentator/map_to_binary.py, v2).
TOTALSEGMENTATOR_V2 = _numbered("""
    spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right adrenal_gland_left
    lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right
    esophagus trachea thyroid_gland small_bowel duodenum colon urinary_bladder prostate kidney_cyst_left
    kidney_cyst_right sacrum vertebrae_S1 vertebrae_L5 vertebrae_L4 vertebrae_L3 vertebrae_L2 vertebrae_L1
    vertebrae_T12 vertebrae_T11 vertebrae_T10 vertebrae_T9 vertebrae_T8 vertebrae_T7 vertebrae_T6 vertebrae_T5
    vertebrae_T4 vertebrae_T3 vertebrae_T2 vertebrae_T1 vertebrae_C7 vertebrae_C6 vertebrae_C5 vertebrae_C4
    vertebrae_C3 vertebrae_C2 vertebrae_C1 heart aorta pulmonary_vein brachiocephalic_trunk
    subclavian_artery_right subclavian_artery_left common_carotid_artery_right common_carotid_artery_left
    brachiocephalic_vein_left brachiocephalic_vein_right atrial_appendage_left superior_vena_cava
    inferior_vena_cava portal_vein_and_splenic_vein iliac_artery_left iliac_artery_right iliac_vena_left
    iliac_vena_right humerus_left humerus_right scapula_left scapula_right clavicula_left clavicula_right
    femur_left femur_right hip_left hip_right spinal_cord gluteus_maximus_left gluteus_maximus_right
    gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right autochthon_left
    autochthon_right iliopsoas_left iliopsoas_right brain skull rib_left_1 rib_left_2 rib_left_3 rib_left_4
    rib_left_5 rib_left_6 rib_left_7 rib_left_8 rib_left_9 rib_left_10 rib_left_11 rib_left_12 rib_right_1
    rib_right_2 rib_right_3 rib_right_4 rib_right_5 rib_right_6 rib_right_7 rib_right_8 rib_right_9 rib_right_10
    rib_right_11 rib_right_12 sternum costal_cartilages
""")
_ABDOMEN = "spleen kidney_right kidney_left gallbladder esophagus liver stomach aorta inferior_vena_cava"
# BTCV 13 organs (Landman et al. 2015; as released by Learn2Reg) and AMOS 2022's 15 (Ji et al. 2022).
BTCV = _numbered(f"{_ABDOMEN} portal_vein_and_splenic_vein pancreas adrenal_gland_right adrenal_gland_left")
AMOS = _numbered(f"{_ABDOMEN} pancreas adrenal_gland_right adrenal_gland_left duodenum urinary_bladder prostate_or_uterus")

# Class name pattern -> structure; the first match wins.
CLASS_STRUCTURES: tuple[tuple[str, str], ...] = (
    ("liver", "liver"), ("kidney_right", "right_kidney"), ("kidney_left", "left_kidney"), ("spleen", "spleen"),
    ("kidney_cyst_*", "kidney_cyst"), ("gallbladder", "gallbladder"), ("stomach", "stomach"),
    ("pancreas", "pancreas"), ("adrenal_gland_*", "adrenal_gland"), ("urinary_bladder", "urinary_bladder"),
    ("esophagus", "bowel"), ("duodenum", "bowel"), ("small_bowel", "bowel"), ("colon", "bowel"),
    ("lung_*", "lung"), ("trachea", "lung"),  # the airway is air, as the lung nearly is
    ("heart", "heart"), ("atrial_appendage_*", "heart"),
    # Pulmonary veins carry the left heart's blood and enhance with the aorta.
    ("aorta", "artery"), ("pulmonary_vein", "artery"), ("brachiocephalic_trunk", "artery"), ("*_artery_*", "artery"),
    ("*_vena_cava", "vein"), ("brachiocephalic_vein_*", "vein"), ("iliac_vena_*", "vein"),
    ("portal_vein_and_splenic_vein", "portal_vein"),
    ("vertebrae_*", "bone"), ("rib_*", "bone"), ("sacrum", "bone"), ("hip_*", "bone"), ("femur_*", "bone"),
    ("humerus_*", "bone"), ("scapula_*", "bone"), ("clavicula_*", "bone"), ("sternum", "bone"), ("skull", "bone"),
    ("costal_cartilages", "bone"),
    ("autochthon_*", "muscle"), ("iliopsoas_*", "muscle"), ("gluteus_*", "muscle"),
    ("*", "body_other"),
)
# Classes that lie inside a target organ but are painted as another tissue: the organ's label keeps them.
WITHIN_ORGAN = {"kidney_cyst_right": "right_kidney", "kidney_cyst_left": "left_kidney"}


def structure_of(class_name: str) -> str:
    """The structure name (``structures.STRUCTURES``) a class of any known table is painted as."""
    return next(structure for pattern, structure in CLASS_STRUCTURES if fnmatchcase(class_name, pattern))


@dataclass(frozen=True, eq=False)
class LabelTable:
    """A known set's label table: ``name`` and ``classes`` {class id: class name} (ids from 1)."""

    name: str
    classes: dict[int, str]

    @cached_property
    def structure_ids(self) -> np.ndarray:
        """(max id + 1,) uint8: class id -> structure id; 0 (nothing labelled) stays 0."""
        lookup = np.zeros(max(self.classes) + 1, dtype=np.uint8)
        for label, name in self.classes.items():
            lookup[label] = STRUCTURE_IDS[structure_of(name)]
        return lookup

    @cached_property
    def organ_ids(self) -> np.ndarray:
        """(max id + 1,) uint8: class id -> target organ id 1-4 (0 for every other class)."""
        lookup = np.zeros(max(self.classes) + 1, dtype=np.uint8)
        for label, name in self.classes.items():
            organ = WITHIN_ORGAN.get(name, structure_of(name))
            if organ in ORGAN_NAMES:
                lookup[label] = organ_by_name(organ).label
        return lookup

    @property
    def labelled(self) -> tuple[int, ...]:
        """The target organs the table has a class for (all four in every known table)."""
        return tuple(sorted({int(label) for label in self.organ_ids} - {0}))

    @property
    def labels_lungs(self) -> bool:
        """Whether the table labels the lungs (then the chest needs no drawing, ``thorax.py``)."""
        return any(structure_of(name) == "lung" for name in self.classes.values())


KNOWN_TABLES = tuple(LabelTable(name, classes) for name, classes in (
    ("TotalSegmentator v2 total", TOTALSEGMENTATOR_V2), ("BTCV", BTCV), ("AMOS", AMOS)))


def find_table(classes: object) -> LabelTable | None:
    """The known table that ``classes`` (a JSON object {"id": "name"}) is exactly, else None."""
    if not isinstance(classes, dict):
        return None
    try:
        given = {int(label): name for label, name in classes.items()}
    except ValueError:
        return None
    return next((table for table in KNOWN_TABLES if table.classes == given), None)
