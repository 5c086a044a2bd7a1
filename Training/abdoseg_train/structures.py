"""Structure ids of anatomy maps (0-21, as the maps store them) and of derived structures."""

MAP_STRUCTURES = {
    0: "outside", 1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen", 5: "body_other",
    6: "bone", 7: "lung", 8: "artery", 9: "vein", 10: "portal_vein", 11: "gallbladder", 12: "stomach",
    13: "pancreas", 14: "adrenal_gland", 15: "liver_tumour", 16: "liver_cyst", 17: "other_tumour",
    18: "biliary_system", 19: "stones", 20: "metal", 21: "resection_site",
}
# Drawn by the training package where the maps leave them inside body_other (thorax.py).
DERIVED_STRUCTURES = {22: "heart"}
STRUCTURES = {**MAP_STRUCTURES, **DERIVED_STRUCTURES}
STRUCTURE_IDS = {name: label for label, name in STRUCTURES.items()}
