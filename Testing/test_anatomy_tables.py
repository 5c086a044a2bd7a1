"""Anatomy maps of other sets (TotalSegmentator v2, BTCV, AMOS): label tables translated by name,
a body outline drawn around the labelled voxels, and synthetic CT painted from them.

Real maps: the TotalSegmentator subjects s0328 (chest to pelvis, all four organs) and s0000 (a
pelvis, none of them) in Testing/Data/anatomy_totalseg (CC BY 4.0).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from abdoseg_train.anatomy import discover_anatomy, load_anatomy
from abdoseg_train.body_outline import TAPER, axial_convex_hulls, body_outline, wall_thickness_mm
from abdoseg_train.cli import main as train_main
from abdoseg_train.label_tables import find_table
from abdoseg_train.structures import STRUCTURE_IDS, STRUCTURES
from abdoseg_train.synthetic import PHASES, TISSUES, paint
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image, write_image
from AbdoSegLib.model.preprocessing import Preprocessing, labels_to_model_grid, model_grid

DATA = Path(__file__).resolve().parent / "Data" / "anatomy_totalseg"
SPEC = Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0))
OUTSIDE, BODY = STRUCTURE_IDS["outside"], STRUCTURE_IDS["body_other"]
# TotalSegmentator v2 class id of each target organ, and its AbdoSeg id.
ORGAN_CLASSES = {"liver": (5, 1), "kidney_right": (2, 2), "kidney_left": (3, 3), "spleen": (1, 4)}


@pytest.fixture(scope="module")
def s0328_source():
    return discover_anatomy(DATA / "s0328_anatomy.nii.gz")[0]


@pytest.fixture(scope="module")
def s0328(s0328_source):
    return load_anatomy(s0328_source, SPEC)


@pytest.fixture(scope="module")
def s0328_classes(s0328_source) -> np.ndarray:
    """s0328's own class ids, nearest-neighbour on the 3 mm model grid."""
    image = read_image(s0328_source.target)
    return labels_to_model_grid(image, model_grid(image, SPEC.spacing_mm))


def _write_map(folder: Path, name: str, array: np.ndarray, classes: dict) -> Path:
    """A map of 3 mm voxels in RAS order (so that the model grid is its own grid) and its JSON."""
    target = folder / f"{name}_anatomy.nii.gz"
    write_image(Image(array.astype(np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])), target)
    (folder / f"{name}_anatomy.json").write_text(json.dumps({"classes": classes}))
    return target


def _totalsegmentator_classes() -> dict:
    return json.loads((DATA / "s0328_anatomy.json").read_text())["classes"]


def test_label_tables_are_recognised_and_their_classes_translated_by_name(s0328_source):
    table = s0328_source.table
    assert table.name == "TotalSegmentator v2 total" and s0328_source.detail is None
    painted = {name: STRUCTURES[table.structure_ids[label]] for label, name in table.classes.items()}
    expected = {"liver": "liver", "kidney_right": "right_kidney", "kidney_left": "left_kidney", "spleen": "spleen",
                "vertebrae_L1": "bone", "rib_left_3": "bone", "hip_right": "bone", "costal_cartilages": "bone",
                "lung_middle_lobe_right": "lung", "trachea": "lung", "atrial_appendage_left": "heart",
                "aorta": "artery", "iliac_artery_left": "artery", "inferior_vena_cava": "vein", "iliac_vena_right": "vein",
                "portal_vein_and_splenic_vein": "portal_vein", "adrenal_gland_left": "adrenal_gland",
                "colon": "bowel", "esophagus": "bowel", "duodenum": "bowel", "autochthon_left": "muscle",
                "gluteus_medius_right": "muscle", "iliopsoas_left": "muscle", "urinary_bladder": "urinary_bladder",
                "kidney_cyst_left": "kidney_cyst", "prostate": "body_other", "spinal_cord": "body_other"}
    assert {name: painted[name] for name in expected} == expected
    # Target organs: the four organs and, inside the kidneys, their cysts; nothing else.
    organs = {table.classes[label]: int(organ) for label, organ in enumerate(table.organ_ids) if organ}
    assert organs == {"spleen": 4, "kidney_right": 2, "kidney_left": 3, "liver": 1,
                      "kidney_cyst_left": 3, "kidney_cyst_right": 2}
    # BTCV and AMOS number the liver 6 and differ from 10 on (ANATOMY_SOURCES.md).
    abdomen = "spleen kidney_right kidney_left gallbladder esophagus liver stomach aorta inferior_vena_cava".split()
    btcv = find_table({str(i): n for i, n in enumerate(abdomen + ["portal_vein_and_splenic_vein", "pancreas",
                                                                  "adrenal_gland_right", "adrenal_gland_left"], 1)})
    amos = find_table({str(i): n for i, n in enumerate(abdomen + ["pancreas", "adrenal_gland_right", "adrenal_gland_left",
                                                                  "duodenum", "urinary_bladder", "prostate_or_uterus"], 1)})
    assert (btcv.name, amos.name) == ("BTCV", "AMOS")
    for table in (btcv, amos):
        assert list(table.organ_ids[[6, 2, 3, 1]]) == [1, 2, 3, 4] and table.labelled == (1, 2, 3, 4)
        assert not table.labels_lungs
    assert STRUCTURES[btcv.structure_ids[10]] == "portal_vein" and STRUCTURES[amos.structure_ids[10]] == "pancreas"
    assert STRUCTURES[amos.structure_ids[13]] == "bowel" and STRUCTURES[amos.structure_ids[14]] == "urinary_bladder"


def test_s0328_has_all_four_organs_exactly_as_its_map_labels_them(s0328, s0328_source, s0328_classes):
    assert s0328.labelled == (1, 2, 3, 4) and s0328.organ_labels == {1, 2, 3, 4}
    image = read_image(s0328_source.target)
    grid = model_grid(image, SPEC.spacing_mm)
    assert s0328.labels.shape == s0328.structures.shape == s0328.depth_mm.shape == grid.shape
    np.testing.assert_allclose(s0328.affine, grid.affine)
    info = json.loads(s0328_source.info.read_text())
    for name, (class_id, organ) in ORGAN_CLASSES.items():
        mask = labels_to_model_grid(image.with_array((np.asarray(image.array) == class_id).astype(np.uint8)), grid)
        np.testing.assert_array_equal(s0328.labels == organ, mask == 1)
        volume_ml = np.sum(s0328.labels == organ) * 27 / 1000
        assert volume_ml == pytest.approx(info["organ_volumes_ml"][name], rel=0.03)  # 1.5 mm map, 3 mm grid
    # Patient's right (the right kidney) at higher x, as RAS has it.
    assert np.argwhere(s0328.labels == 2)[:, 0].mean() > np.argwhere(s0328.labels == 3)[:, 0].mean()
    # Every labelled voxel is painted as its class's structure; the lungs and the heart are the map's own.
    labelled = s0328_classes > 0
    np.testing.assert_array_equal(s0328.structures[labelled], s0328_source.table.structure_ids[s0328_classes[labelled]])


def test_the_body_outline_holds_every_labelled_voxel_and_air_surrounds_it(s0328, s0328_classes):
    labelled = s0328_classes > 0
    wall = wall_thickness_mm("s0328")
    spacing = np.linalg.norm(s0328.affine[:3, :3], axis=0)  # 3.01 mm: 265 voxels of 1.5 mm in 132
    body = body_outline(labelled, spacing, wall)
    assert body[labelled].all()
    # Inside the outline and unlabelled: the rest of the body; outside it: air, at depth 0.
    np.testing.assert_array_equal(s0328.structures[~labelled] == BODY, body[~labelled])
    np.testing.assert_array_equal(s0328.structures == OUTSIDE, ~body)
    assert s0328.depth_mm[~body].max() == 0 and s0328.depth_mm[body].min() >= 1
    assert ndimage.label(body)[1] == 1
    # The body reaches at most one wall beyond the labelled voxels' extent: the anterior border of
    # the image (y = max), more than a wall in front of the belly, is air.
    for axis in (0, 1):
        others, wall_voxels = tuple(a for a in range(3) if a != axis), wall / spacing[axis]
        labelled_extent, body_extent = (np.flatnonzero(m.any(axis=others)) for m in (labelled, body))
        assert body_extent[0] >= labelled_extent[0] - wall_voxels and body_extent[-1] <= labelled_extent[-1] + wall_voxels
    assert np.flatnonzero(labelled.any(axis=(0, 2)))[-1] + wall / spacing[1] < body.shape[1] - 1
    assert not body[:, -1, :].any()


def test_the_outline_of_two_boxes_is_grown_by_the_wall_tapers_between_them_and_ends_a_wall_beyond():
    labelled = np.zeros((60, 60, 60), dtype=bool)
    labelled[20:40, 20:40, 10:20] = True
    labelled[20:40, 20:40, 40:50] = True
    body = body_outline(labelled, np.array([3.0, 3.0, 3.0]), 12.0)

    def grown(mm: float) -> np.ndarray:
        return ndimage.distance_transform_edt(~labelled[:, :, 15], sampling=3.0) <= mm

    np.testing.assert_array_equal(body[:, :, 15], grown(12.0))
    # 6 mm below the first labelled slice the body is TAPER x 6 mm narrower; 30 mm from both boxes
    # (the middle of the gap), TAPER x 30 mm narrower, and never broken.
    np.testing.assert_array_equal(body[:, :, 8], grown(12.0 - TAPER * 6))
    np.testing.assert_array_equal(body[:, :, 29], grown(12.0 - TAPER * 30))
    assert body[:, :, 6].any() and not body[:, :, 5].any()  # a wall (12 mm, 4 slices) beyond the last labels
    assert body[:, :, 53].any() and not body[:, :, 54:].any()
    # In a slice, the hull fills the space between labelled parts.
    pair = np.zeros((30, 30, 1), dtype=bool)
    pair[2:5, 10:13, 0] = pair[25:28, 10:13, 0] = True
    assert axial_convex_hulls(pair)[15, 11, 0] and not axial_convex_hulls(pair)[15, 20, 0]


@pytest.mark.parametrize("phase", PHASES)
def test_painted_structures_of_s0328_lie_in_their_tissue_ranges(s0328, phase):
    hu = paint(s0328.structures, s0328.depth_mm, np.random.default_rng(7), phase=phase, random_phase=0.0)
    painted = set(np.unique(s0328.structures)) - {OUTSIDE, BODY}
    assert {STRUCTURE_IDS[name] for name in ("bowel", "muscle", "urinary_bladder", "heart", "lung", "bone")} <= painted
    for label in painted - {STRUCTURE_IDS["bowel"], STRUCTURE_IDS["stomach"]}:  # hollow: Testing/test_synthetic.py
        tissue = TISSUES[int(label)]
        low, high = tissue.mean_hu[phase]
        mean = float(hu[s0328.structures == label].mean())
        assert low - tissue.spread_hu[1] <= mean <= high + tissue.spread_hu[1], (STRUCTURES[int(label)], mean)
    assert np.all(hu[s0328.structures == OUTSIDE] < -950)


NO_VARIATION = ["--distractor-probability", "0", "--lesion-probability", "0", "--organ-scaling-probability", "0", "--colon-probability", "0"]


def test_synth_writes_s0328_with_its_labels_untouched(s0328, tmp_path):
    labels = s0328.labels.copy()
    assert train_main(["synth", str(DATA / "s0328_anatomy.nii.gz"), "-o", str(tmp_path), "--phase", "portal_venous", *NO_VARIATION]) == 0
    folder = tmp_path / "s0328_synthetic_1"
    np.testing.assert_array_equal(read_image(folder / "label.nii.gz").array, labels)
    assert json.loads((folder / "case.json").read_text())["labelled"] == ["liver", "right_kidney", "left_kidney", "spleen"]
    ct = read_image(folder / "ct.nii.gz").array
    assert 60 < np.median(ct[labels == 1]) < 170  # portal-venous liver 90-140 HU, plus scanner effects


def test_synth_draws_distractors_lesions_and_scaled_organs_as_training_does(s0328, tmp_path):
    def synth(name: str, *options: str) -> tuple[np.ndarray, np.ndarray, dict]:
        command = ["synth", str(DATA / "s0328_anatomy.nii.gz"), "-o", str(tmp_path / name), "--phase", "portal_venous", *options]
        assert train_main(command) == 0
        folder = tmp_path / name / "s0328_synthetic_1"
        info = json.loads((folder / "case.json").read_text())["synthetic"]["variation"]
        return read_image(folder / "ct.nii.gz").array, read_image(folder / "label.nii.gz").array, info

    plain_ct, plain_labels, _ = synth("plain", *NO_VARIATION)
    drawn_ct, drawn_labels, drawn = synth("drawn", "--distractor-probability", "1", "--lesion-probability", "1", "--organ-scaling-probability", "0",
                                          "--colon-probability", "0")
    assert drawn == {"distractor_probability": 1.0, "lesion_probability": 1.0, "organ_scaling_probability": 0.0, "colon_probability": 0.0,
                     "renal_pelvis_probability": 0.0}
    np.testing.assert_array_equal(drawn_labels, plain_labels)  # distractors are background, lesions their organ
    changed = np.abs(drawn_ct.astype(np.int32) - plain_ct) > 0
    assert changed.mean() > 0.001  # same seed: the painting differs by what was drawn
    _, scaled_labels, _ = synth("scaled", "--distractor-probability", "0", "--lesion-probability", "0", "--organ-scaling-probability", "1")
    volumes = [np.count_nonzero(labels == organ) for labels in (plain_labels, scaled_labels) for organ in range(1, 5)]
    assert sum(a != b for a, b in zip(volumes[:4], volumes[4:])) == 1  # one organ grown or shrunk, the others as they were


def test_s0000_a_pelvis_has_every_organ_labelled_as_absent():
    """The known sets label each target organ wherever it is in view: an organ not in the map is
    background (in the loss too), not unknown."""
    source = discover_anatomy(DATA / "s0000_anatomy.nii.gz")[0]
    case = load_anatomy(source, SPEC)
    assert not case.labels.any() and case.organ_labels == frozenset()
    assert case.labelled == (1, 2, 3, 4)
    assert not set(json.loads(source.info.read_text())["present"]) & set(ORGAN_CLASSES)
    assert {STRUCTURE_IDS[name] for name in ("bone", "muscle", "urinary_bladder", "body_other")} <= set(np.unique(case.structures))


def test_a_kidney_cyst_is_kidney_in_the_labels_and_fluid_in_the_painting(tmp_path):
    array = np.zeros((30, 30, 30), dtype=np.uint8)
    array[8:20, 10:20, 10:22] = 3  # kidney_left
    array[12:16, 13:17, 14:18] = 23  # kidney_cyst_left
    case = load_anatomy(discover_anatomy(_write_map(tmp_path, "cyst", array, _totalsegmentator_classes()))[0], SPEC)
    np.testing.assert_array_equal(case.labels, np.where(array > 0, 3, 0))
    cyst = case.structures == STRUCTURE_IDS["kidney_cyst"]
    np.testing.assert_array_equal(cyst, array == 23)
    hu = paint(case.structures, case.depth_mm, np.random.default_rng(0), phase="portal_venous", random_phase=0.0)
    assert -15 < hu[cyst].mean() < 30 and hu[array == 3].mean() > 100


def test_maps_with_an_unknown_label_table_or_foreign_values_are_refused_in_one_sentence(tmp_path, capsys):
    shutil.copy(DATA / "s0000_anatomy.nii.gz", tmp_path / "odd_anatomy.nii.gz")
    (tmp_path / "odd_anatomy.json").write_text(json.dumps({"classes": {"1": "liver", "2": "lesion"}}))
    with pytest.raises(AbdoSegError, match="label table .* is none of the known ones"):
        discover_anatomy(tmp_path / "odd_anatomy.nii.gz")
    assert train_main(["synth", str(tmp_path / "odd_anatomy.nii.gz"), "-o", str(tmp_path / "out")]) != 0
    error = capsys.readouterr().err
    assert "none of the known ones" in error and "Traceback" not in error and len(error.strip().splitlines()) == 1
    array = np.zeros((10, 10, 10), dtype=np.uint8)
    array[4:6, 4:6, 4:6] = 200
    with pytest.raises(AbdoSegError, match="not all class ids of its TotalSegmentator v2 total label table"):
        load_anatomy(discover_anatomy(_write_map(tmp_path, "foreign", array, _totalsegmentator_classes()))[0], SPEC)
