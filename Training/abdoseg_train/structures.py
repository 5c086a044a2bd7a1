"""Structure ids: what each voxel of an anatomy map is, for painting synthetic CT.

0-21 are the ids the 3D-IRCADb anatomy maps store; 22 is drawn by the training package where
those maps leave the chest unlabelled (``thorax.py``) and is also what other maps call the heart;
23-26 are labelled only by the maps of other sets (TotalSegmentator, BTCV, AMOS), whose classes
``label_tables.py`` translates to these names; 27, a cyst outside the organs, is drawn into
training patches as a distractor; 28, urine in a kidney's sinus (``renal_sinus.py``), where maps leave it
unlabelled.
"""

MAP_STRUCTURES = {
    0: "outside", 1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen", 5: "body_other",
    6: "bone", 7: "lung", 8: "artery", 9: "vein", 10: "portal_vein", 11: "gallbladder", 12: "stomach",
    13: "pancreas", 14: "adrenal_gland", 15: "liver_tumour", 16: "liver_cyst", 17: "other_tumour",
    18: "biliary_system", 19: "stones", 20: "metal", 21: "resection_site",
}
DERIVED_STRUCTURES = {22: "heart"}
OTHER_MAP_STRUCTURES = {23: "bowel", 24: "muscle", 25: "urinary_bladder", 26: "kidney_cyst"}
PATCH_STRUCTURES = {27: "cyst", 28: "renal_pelvis"}  # drawn into one training patch only
STRUCTURES = {**MAP_STRUCTURES, **DERIVED_STRUCTURES, **OTHER_MAP_STRUCTURES, **PATCH_STRUCTURES}
STRUCTURE_IDS = {name: label for label, name in STRUCTURES.items()}
