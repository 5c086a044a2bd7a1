"""Synthetic CT from 3D-IRCADb-01 anatomy maps: tissue HU, untouched labels, laterality under flips, training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from abdoseg_train.anatomy import AnatomyCase, discover_anatomy, load_anatomy
from abdoseg_train.augment import Augmenter
from abdoseg_train.cases import discover_cases
from abdoseg_train.cli import main as train_main
from abdoseg_train.fit import TrainConfig, fit
from abdoseg_train.structures import STRUCTURE_IDS
from abdoseg_train.synthetic import FAT_HU, GAS_HU, ORAL_CONTRAST_HU, PHASES, SOFT_HU, TISSUES, paint
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.bundle import load_bundle
from AbdoSegLib.model.preprocessing import Preprocessing, labels_to_model_grid, model_grid

SPEC = Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0))
FULL_ANATOMY = "ircad_05"  # the one map with liver, both kidneys, spleen, lungs, stomach and pancreas


@pytest.fixture(scope="session")
def full_anatomy(anatomy_dir: Path) -> AnatomyCase:
    return load_anatomy(discover_anatomy(anatomy_dir / f"{FULL_ANATOMY}_anatomy.nii.gz")[0], SPEC)


def test_anatomy_maps_are_found_with_their_labelled_organs(anatomy_dir, full_anatomy):
    sources = discover_anatomy(anatomy_dir)
    assert len(sources) == 17 and all(s.detail.is_file() and s.info.is_file() for s in sources)
    assert full_anatomy.labelled == (1, 2, 3, 4)
    partial = load_anatomy(next(s for s in sources if s.name == "ircad_02"), SPEC)
    assert partial.labelled == (1,)  # kidneys and spleen lie unlabelled inside body_other
    # On the 3 mm grid, in RAS order: the right kidney (2) lies at higher x (patient's right).
    right, left = (np.argwhere(full_anatomy.labels == k)[:, 0].mean() for k in (2, 3))
    assert right > left
    assert full_anatomy.structures.shape == full_anatomy.labels.shape == full_anatomy.depth_mm.shape
    assert full_anatomy.depth_mm[full_anatomy.structures == STRUCTURE_IDS["outside"]].max() == 0


@pytest.mark.parametrize("phase", PHASES)
def test_painted_tissues_lie_in_their_phase_ranges(full_anatomy, phase):
    """Median HU of each painted structure within its tissue's range for that phase."""
    rng = np.random.default_rng(1)
    hu = paint(full_anatomy.structures, full_anatomy.depth_mm, rng, phase=phase, random_phase=0.0)
    assert hu.dtype == np.float32 and hu.shape == full_anatomy.structures.shape
    for name in ("liver", "right_kidney", "left_kidney", "spleen", "bone", "lung", "artery", "portal_vein", "stomach", "pancreas"):
        low, high = TISSUES[STRUCTURE_IDS[name]].mean_hu[phase]
        spread = TISSUES[STRUCTURE_IDS[name]].spread_hu[1]
        median = float(np.median(hu[full_anatomy.structures == STRUCTURE_IDS[name]]))
        assert low - spread <= median <= high + spread, (name, median)
    assert np.all(hu[full_anatomy.structures == STRUCTURE_IDS["outside"]] < -950)
    body = hu[full_anatomy.structures == STRUCTURE_IDS["body_other"]]
    fat_share = float(np.mean((body > FAT_HU[0] - 60) & (body < FAT_HU[1] + 40)))
    assert 0.2 < fat_share < 0.75  # a fat / soft tissue mixture, as in real abdomens (~42 % fat)


def test_gas_and_oral_contrast_stay_in_the_bowel_and_muscle_covers_the_liver(full_anatomy):
    """No gas or contrast in the body wall; the body voxels that touch the liver on the skin side
    (the diaphragm and wall muscles) are soft tissue. The generator before this rule put bowel gas
    in the wall's muscle layer and left a third of that cover fat, gas or contrast."""
    structures, depth = full_anatomy.structures, full_anatomy.depth_mm
    body = structures == STRUCTURE_IDS["body_other"]
    distance, nearest = ndimage.distance_transform_edt(structures != STRUCTURE_IDS["liver"], return_indices=True)
    cover = body & (distance <= 1) & (depth < depth[tuple(nearest)])
    assert cover.sum() > 1000
    for seed in range(6):
        hu = paint(structures, depth, np.random.default_rng(seed), phase="portal_venous")
        bowel_content = body & ((hu <= GAS_HU[1]) | (hu >= ORAL_CONTRAST_HU[0]))
        assert not (bowel_content & (depth < 10)).any()  # the wall: at least 5 mm of fat and 5 of muscle
        assert not (bowel_content & cover).any()
        soft = (hu[cover] >= SOFT_HU[0] - 60) & (hu[cover] <= SOFT_HU[1] + 60)
        assert soft.mean() > 0.95, (seed, soft.mean())


def test_phases_order_the_enhancement_of_kidneys_and_arteries(full_anatomy):
    """Arterial phase: brightest arteries; unenhanced: kidneys darker than in portal-venous."""
    medians = {}
    for phase in PHASES:
        hu = paint(full_anatomy.structures, full_anatomy.depth_mm, np.random.default_rng(2), phase=phase, random_phase=0.0)
        medians[phase] = {name: float(np.median(hu[full_anatomy.structures == STRUCTURE_IDS[name]])) for name in ("artery", "right_kidney")}
    assert medians["arterial"]["artery"] > medians["portal_venous"]["artery"] > medians["unenhanced"]["artery"]
    assert medians["unenhanced"]["right_kidney"] < 60 < medians["portal_venous"]["right_kidney"]


def test_random_phase_draws_soft_tissue_means_anywhere_in_the_range(full_anatomy):
    box = ndimage.find_objects((full_anatomy.structures == STRUCTURE_IDS["liver"]).astype(np.uint8))[0]
    structures, depth = full_anatomy.structures[box], full_anatomy.depth_mm[box]
    liver_means = []
    for seed in range(12):
        hu = paint(structures, depth, np.random.default_rng(seed), phase="portal_venous", random_phase=1.0)
        liver_means.append(float(np.median(hu[structures == STRUCTURE_IDS["liver"]])))
    assert min(liver_means) < 60 and max(liver_means) > 160  # well outside the portal-venous 90-140 HU


def test_synthetic_patches_keep_labels_aligned_and_kidneys_on_their_side_under_flips(full_anatomy):
    """Mirrored patches swap the kidney labels, so the right kidney (2) stays on the patient's right."""
    for flip in (0.0, 1.0):
        augment = Augmenter((96, 96, 96), seed=4, rotate_deg=0.0, scale=0.0, flip_probability=flip, spec=SPEC,
                            field_of_view_probability=0.0)
        seen_both = 0
        for index in range(16):
            image, labels, labelled = augment(full_anatomy, organ=2 + index % 2)  # centred on a kidney
            assert image.shape == (1, 96, 96, 96) and labels.shape == (96, 96, 96) and labelled == (1, 2, 3, 4)
            assert image.min() >= -1 and image.max() <= 1
            # Image and labels come from the same voxels: organs are brighter than the fat around them.
            assert float(image[0][labels > 0].mean()) > float(image[0][labels == 0].median())
            if (labels == 2).any() and (labels == 3).any():
                seen_both += 1
                right_x = torch.nonzero(labels == 2)[:, 0].float().mean()
                left_x = torch.nonzero(labels == 3)[:, 0].float().mean()
                assert right_x > left_x
        assert seen_both >= 6  # measured 10 and 11 of 16


def test_synth_command_writes_case_folders_whose_labels_are_the_anatomy_s(anatomy_dir, tmp_path):
    out = tmp_path / "synthetic"
    assert train_main(["synth", str(anatomy_dir / f"{FULL_ANATOMY}_anatomy.nii.gz"), "-o", str(out), "--phase", "arterial", "--count", "2",
                       "--distractor-probability", "0", "--lesion-probability", "0", "--organ-scaling-probability", "0",
                       "--colon-probability", "0"]) == 0
    folders = sorted(out.iterdir())
    assert [f.name for f in folders] == [f"{FULL_ANATOMY}_synthetic_1", f"{FULL_ANATOMY}_synthetic_2"]
    target = read_image(anatomy_dir / f"{FULL_ANATOMY}_anatomy.nii.gz")
    expected = labels_to_model_grid(target, model_grid(target, SPEC.spacing_mm))
    expected[expected > 4] = 0
    cases = discover_cases(out)
    assert [c.labelled for c in cases] == [(1, 2, 3, 4)] * 2
    cts = []
    for folder in folders:
        labels, ct = read_image(folder / "label.nii.gz"), read_image(folder / "ct.nii.gz")
        np.testing.assert_array_equal(labels.array, expected)  # painting never touches the labels
        np.testing.assert_allclose(ct.affine, labels.affine)
        assert json.loads((folder / "case.json").read_text())["synthetic"] == {"anatomy": FULL_ANATOMY, "phase": "arterial", "variation": {
            "distractor_probability": 0.0, "lesion_probability": 0.0, "organ_scaling_probability": 0.0, "colon_probability": 0.0,
            "renal_pelvis_probability": 0.0}}
        assert 40 < np.median(ct.array[labels.array == 1]) < 140  # arterial liver 60-100 HU, plus scanner effects
        cts.append(ct.array)
    assert not np.array_equal(*cts)  # two draws, two scans


def test_synth_command_refuses_bad_input_in_one_sentence(anatomy_dir, tmp_path, capsys):
    assert train_main(["synth", str(tmp_path / "missing_anatomy.nii.gz"), "-o", str(tmp_path / "out")]) != 0
    assert "does not exist" in capsys.readouterr().err
    lonely = tmp_path / "lonely_anatomy.nii.gz"
    shutil.copy(anatomy_dir / f"{FULL_ANATOMY}_anatomy.nii.gz", lonely)
    assert train_main(["synth", str(lonely), "-o", str(tmp_path / "out")]) != 0
    error = capsys.readouterr().err
    assert "lonely_anatomy_detail.nii.gz is missing" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_training_on_anatomy_maps_alone_and_mixed_with_real_cases(anatomy_dir, ts_example_case, tmp_path):
    sources = discover_anatomy(anatomy_dir / f"{FULL_ANATOMY}_anatomy.nii.gz")
    config = TrainConfig(width=4, depth=2, convs_per_stage=(1, 1, 1), patch=(32, 32, 32), inference_patch=(96, 96, 64),
                         epochs=1, iterations_per_epoch=2, learning_rate=1e-3, flip_probability=0.0, name="synthetic")
    fit([], [], config, tmp_path / "synthetic.safetensors", tmp_path / "run1", synthetic=sources)
    mixed = TrainConfig(**{**config.__dict__, "name": "mixed", "synthetic_fraction": 0.5})
    fit(discover_cases(ts_example_case), [], mixed, tmp_path / "mixed.safetensors", tmp_path / "run2", synthetic=sources)
    for name, real in (("synthetic", []), ("mixed", ["ts_example"])):
        training = load_bundle(tmp_path / f"{name}.safetensors").metadata["training"]
        assert training["synthetic_cases"] == [FULL_ANATOMY] and training["train_cases"] == real
        assert training["flip_probability"] == 0.0
    with pytest.raises(AbdoSegError, match="no training cases"):
        fit([], [], config, tmp_path / "none.safetensors", tmp_path / "run3")
