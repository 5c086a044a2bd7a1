"""The training package: augmentation keeps laterality right, partial labels, a smoke run."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from abdoseg_train import augment
from abdoseg_train import fit as fit_module
from abdoseg_train.anatomy import discover_anatomy, load_anatomy
from abdoseg_train.augment import Augmenter, cut_field_of_view, flip_left_right, random_crop, swap_labelled
from abdoseg_train.cases import discover_cases
from abdoseg_train.checkpoint import load_checkpoint, save_checkpoint
from abdoseg_train.cli import main as train_main
from abdoseg_train.draw import NO_ORGAN, draw_case
from abdoseg_train.evaluation import organ_table, score_cases
from abdoseg_train.fit import NO_VALIDATION_NOTE, TrainConfig, fit
from abdoseg_train.losses import class_mask, marginal_probabilities, partial_dice_ce_loss
from abdoseg_train.negatives import NegativeCentres
from abdoseg_train.patches import epoch_batches
from abdoseg_train.prepared import PreparedCase
from AbdoSegLib.cli import main as abdoseg
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.io.labelmaps import parse_mapping
from AbdoSegLib.model.bundle import load_bundle
from AbdoSegLib.model.preprocessing import PAD_VALUE, Preprocessing
from AbdoSegLib.organs import NUM_CLASSES, ORGANS
from AbdoSegLib.outputs import LABELS_FILE
from AbdoSegLib.resources import SAMPLE_CT, SAMPLE_REFERENCE


def test_flip_swaps_kidney_labels_and_mirrors_the_image():
    image = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)
    labels = torch.tensor([0, 1, 2, 3]).reshape(4, 1, 1).expand(4, 3, 2).to(torch.uint8)
    flipped_image, flipped_labels = flip_left_right(image, labels)
    torch.testing.assert_close(flipped_image, image.flip(0))
    # Axis 0 reversed: [0, 1, 2, 3] -> [3, 2, 1, 0], then right (2) <-> left (3) kidney.
    assert flipped_labels[:, 0, 0].tolist() == [2, 3, 1, 0]
    assert swap_labelled((1, 2)) == (1, 3)
    assert swap_labelled((1, 4)) == (1, 4)


def test_flip_on_real_anatomy_keeps_kidneys_on_their_side():
    """After a flip the label called right kidney lies on the patient's right again (high R index)."""
    labels = torch.from_numpy(read_image(SAMPLE_REFERENCE).array.astype(np.uint8))  # RAS voxel order
    image = torch.zeros(labels.shape)
    _, flipped = flip_left_right(image, labels)
    for volume in (labels, flipped):
        right_x = torch.nonzero(volume == 2)[:, 0].float().mean()
        left_x = torch.nonzero(volume == 3)[:, 0].float().mean()
        assert right_x > left_x  # RAS: index 0 grows towards the patient's right


def test_augmenter_output_shapes_and_labels():
    reference = torch.from_numpy(read_image(SAMPLE_REFERENCE).array.astype(np.uint8))
    case = PreparedCase("sample", torch.zeros(reference.shape), reference, (1, 2, 3, 4), np.eye(4))
    augment = Augmenter((32, 32, 32), seed=1)
    for _ in range(4):
        image, labels, labelled = augment(case)
        assert image.shape == (1, 32, 32, 32) and labels.shape == (32, 32, 32)
        assert set(labels.unique().tolist()) <= set(range(NUM_CLASSES))
        assert labelled == (1, 2, 3, 4)


def test_a_cut_field_of_view_pads_the_image_and_clears_the_labels_beyond_the_scan():
    """Beyond the scan's end the image is exactly the inference padding and the labels 0; inside
    both are untouched. Axial cuts keep one run of slices (below, above or both cut); circular
    cuts keep the same disc in every slice. Each cut removes some voxels and keeps some."""
    rng = np.random.default_rng(3)
    image = torch.rand(1, 20, 24, 30) + 0.5
    labels = torch.randint(1, NUM_CLASSES, (20, 24, 30))
    kinds = set()
    for _ in range(60):
        cut_image, cut_labels = cut_field_of_view(image, labels, rng)
        outside = cut_image[0] == PAD_VALUE
        assert 0 < int(outside.sum()) < outside.numel()
        assert torch.equal(cut_labels == 0, outside)
        assert torch.equal(cut_image[0][~outside], image[0][~outside]) and torch.equal(cut_labels[~outside], labels[~outside])
        kept_slices = (~outside).any(dim=(0, 1)).nonzero()[:, 0].tolist()
        if all(bool(outside[..., z].all()) or not bool(outside[..., z].any()) for z in range(30)):
            assert kept_slices == list(range(kept_slices[0], kept_slices[-1] + 1))  # one run of slices
            kinds.add(("below" if kept_slices[0] > 0 else "") + ("above" if kept_slices[-1] < 29 else ""))
        else:
            assert all(torch.equal(outside[..., z], outside[..., 0]) for z in range(30))  # the same disc in each slice
            kinds.add("circle")
    assert kinds == {"below", "above", "belowabove", "circle"}


def test_the_end_of_a_cut_scan_often_passes_through_an_organ(monkeypatch):
    """An organ in 5 of 30 slices and a 6x6 of 20x24 columns: a uniform scan end cuts it (keeps some of it and
    clears some) in about one cut of four (0.27 measured); placed through an organ half the time, in more than
    half (0.65)."""
    image = torch.zeros(1, 20, 24, 30)
    labels = torch.zeros(20, 24, 30, dtype=torch.long)
    labels[7:13, 9:15, 12:17] = 2

    def share_cutting_the_organ(seed: int) -> float:
        rng = np.random.default_rng(seed)
        cuts = [cut_field_of_view(image, labels, rng)[1] for _ in range(400)]
        return np.mean([0 < int((cut == 2).sum()) < int((labels == 2).sum()) for cut in cuts])

    assert share_cutting_the_organ(0) > 0.55
    monkeypatch.setattr(augment, "THROUGH_ORGAN_PROBABILITY", 0.0)
    assert share_cutting_the_organ(0) < 0.35


def test_unlabelled_organs_are_left_out_of_the_loss():
    """A liver-only case: where the label says 0, moving probability from background to the
    (unlabelled) spleen leaves the loss unchanged; with full labels the same move costs."""
    torch.manual_seed(0)
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[0, 2:5, 2:5, 2:5] = 1
    mask = class_mask([(1,)])
    logits = torch.randn(1, NUM_CLASSES, 8, 8, 8)
    loss = partial_dice_ce_loss(logits, labels, mask)
    # Move all background mass to the spleen (4) without changing any other probability.
    moved = torch.softmax(logits, 1)
    moved[:, 4] += moved[:, 0]
    moved[:, 0] = 1e-12
    assert float(partial_dice_ce_loss(torch.log(moved), labels, mask)) == pytest.approx(float(loss), rel=1e-4)
    merged = marginal_probabilities(logits, mask)
    assert torch.all(merged[:, 2:] == 0)
    # With full labels the same move is penalised.
    full = class_mask([(1, 2, 3, 4)])
    assert float(partial_dice_ce_loss(torch.log(moved), labels, full)) > float(partial_dice_ce_loss(logits, labels, full))


def _tiny_case(folder: Path, name: str, crop: tuple[slice, ...], labelled: list[str]) -> Path:
    """A real case cut from the sample CT (3 mm), written as a case folder."""
    ct = nib.load(str(SAMPLE_CT))
    reference = nib.load(str(SAMPLE_REFERENCE))
    case = folder / name
    case.mkdir(parents=True)
    offset = np.eye(4)
    offset[:3, 3] = [s.start for s in crop]
    affine = ct.affine @ offset
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj)[crop].astype(np.int16), affine), str(case / "ct.nii.gz"))
    label = np.asarray(reference.dataobj)[crop].astype(np.uint8)
    keep = [{"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}[n] for n in labelled]
    label[~np.isin(label, keep)] = 0
    nib.save(nib.Nifti1Image(label, affine), str(case / "label.nii.gz"))
    (case / "case.json").write_text(json.dumps({"labelled": labelled}))
    return case


def test_smoke_training_exports_a_bundle_that_segments(tmp_path):
    torch.set_num_threads(2)
    cases = tmp_path / "cases"
    _tiny_case(cases, "upper", (slice(20, 100), slice(10, 90), slice(50, 100)), ["liver", "right_kidney", "left_kidney", "spleen"])
    _tiny_case(cases, "liver_only", (slice(10, 90), slice(10, 90), slice(40, 90)), ["liver"])
    validation = _tiny_case(tmp_path / "val", "val", (slice(20, 100), slice(10, 90), slice(40, 90)), ["liver", "spleen"])
    config = TrainConfig(width=4, depth=2, convs_per_stage=(1, 1, 1), patch=(32, 32, 32), inference_patch=(96, 96, 64),
                         epochs=2, iterations_per_epoch=3, validate_every=1, learning_rate=1e-3, name="smoke")
    out = tmp_path / "smoke.safetensors"
    best = fit(discover_cases(cases), discover_cases(validation), config, out, tmp_path / "run", cache_dir=tmp_path / "cache")
    bundle = load_bundle(out)
    assert bundle.metadata["training"]["train_cases"] == ["liver_only", "upper"]
    assert bundle.metadata["training"]["validation_cases"] == ["val"]
    assert set(bundle.metadata["validation"]["dice"]) == {"liver", "spleen"}  # only the labelled organs
    assert bundle.metadata["validation"] == json.loads(json.dumps(best))
    result = tmp_path / "segmented"
    assert abdoseg(["segment", str(validation / "ct.nii.gz"), "-o", str(result), "--model", str(out), "--progress", "none"]) == 0
    assert read_image(result / LABELS_FILE).same_grid(read_image(validation / "ct.nii.gz"))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny real training cases (one liver-only) and one validation case."""
    root = tmp_path_factory.mktemp("dataset")
    _tiny_case(root / "train", "upper", (slice(20, 100), slice(10, 90), slice(50, 100)), ["liver", "right_kidney", "left_kidney", "spleen"])
    _tiny_case(root / "train", "liver_only", (slice(10, 90), slice(10, 90), slice(40, 90)), ["liver"])
    _tiny_case(root / "val", "val", (slice(20, 100), slice(10, 90), slice(40, 90)), ["liver", "spleen"])
    return root / "train", root / "val"


def _train_cli(*args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [*launcher, "-m", "abdoseg_train.cli"] if launcher else [sys.executable, "-m", "abdoseg_train.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=600)


TINY_ARGS = ("--width", "4", "--patch", "32", "--iterations-per-epoch", "2", "--validate-every", "1", "--lr", "1e-3")


def test_a_run_resumed_after_a_crash_ends_with_the_weights_of_an_uninterrupted_one(tiny_dataset, tmp_path, monkeypatch):
    """Two epochs with two worker processes; the first attempt dies after epoch 1's checkpoint."""
    train, val = discover_cases(tiny_dataset[0]), discover_cases(tiny_dataset[1])
    config = TrainConfig(width=4, depth=2, convs_per_stage=(1, 1, 1), patch=(32, 32, 32), inference_patch=(96, 96, 64),
                         epochs=2, iterations_per_epoch=2, validate_every=1, learning_rate=1e-3, workers=2)
    fit(train, val, config, tmp_path / "whole.safetensors", tmp_path / "whole")

    def crash_after_saving(path, **state):
        save_checkpoint(path, **state)
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "save_checkpoint", crash_after_saving)
    with pytest.raises(KeyboardInterrupt):
        fit(train, val, config, tmp_path / "crashed.safetensors", tmp_path / "run")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    fit(train, val, config, tmp_path / "resumed.safetensors", tmp_path / "run", resume=tmp_path / "run" / "checkpoint.pt")
    whole, resumed = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert [row["loss"] for row in resumed["log"]] == [row["loss"] for row in whole["log"]]
    for key, value in whole["network"].items():
        torch.testing.assert_close(resumed["network"][key], value, rtol=0, atol=0)
    longer = dataclasses.replace(config, epochs=3)
    with pytest.raises(AbdoSegError, match="run of 2 epochs of 2 iterations; resume it with the same"):
        fit(train, val, longer, tmp_path / "longer.safetensors", tmp_path / "run", resume=tmp_path / "run" / "checkpoint.pt")


def test_training_writes_its_log_and_export_rebuilds_the_bundle_from_the_checkpoint(tiny_dataset, tmp_path):
    train, val = tiny_dataset
    run = tmp_path / "run"
    trained = _train_cli("fit", "--train", str(train), "--validate", str(val), "-o", str(tmp_path / "b.safetensors"),
                         "--epochs", "2", "--workdir", str(run), *TINY_ARGS, "--workers", "2")
    assert trained.returncode == 0, trained.stderr
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert "dice/liver" in rows[0] and "hd95/spleen" in rows[0]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    exported = _train_cli("export", str(run / "checkpoint.pt"), "-o", str(tmp_path / "c.safetensors"))
    assert exported.returncode == 0, exported.stderr
    best = load_bundle(tmp_path / "b.safetensors")
    rebuilt = load_bundle(tmp_path / "c.safetensors")
    for key, value in best.network.state_dict().items():
        torch.testing.assert_close(rebuilt.network.state_dict()[key], value)
    assert rebuilt.metadata["validation"] == best.metadata["validation"]
    assert best.metadata["training"]["workers"] == 2
    refused = _train_cli("export", str(run / "checkpoint.pt"), "-o", str(tmp_path / "d.safetensors"), "--crop-margin", "10")
    assert refused.returncode == 1 and "--crop-margin goes only with a second stage's" in refused.stderr
    assert not (tmp_path / "d.safetensors").exists()


@pytest.mark.parametrize("package", ["monai", "tensorboard"])
def test_training_without_the_train_extra_is_refused_in_one_sentence(tmp_path, monkeypatch, package):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == package else real_find_spec(name, *args))
    with pytest.raises(AbdoSegError, match=rf"training needs {package}, which is not installed; install it with pip install 'abdoseg\[train\]'"):
        fit([], [], TrainConfig(), tmp_path / "model.safetensors", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_epochs_batches_depend_on_the_epoch_and_come_from_the_workers_in_turn():
    """The stream of an epoch is the same each time it is read; another epoch's differs; with two
    workers, batches 0 and 2 are the first two of worker 0, whose stream is the single-process one."""
    reference = torch.from_numpy(read_image(SAMPLE_REFERENCE).array.astype(np.uint8))
    case = PreparedCase("sample", torch.rand(reference.shape), reference, (1, 2, 3, 4), np.eye(4))
    config = TrainConfig(patch=(24, 24, 24), batch_size=2, iterations_per_epoch=4, seed=5)

    def images(epoch: int, workers: int = 0) -> list[torch.Tensor]:
        config.workers = workers
        return [batch[0] for batch in epoch_batches([case], [], config, rank=0, epoch=epoch)]

    first = images(3)
    assert len(first) == 4 and first[0].shape == (2, 1, 24, 24, 24)
    assert all(torch.equal(a, b) for a, b in zip(first, images(3)))
    assert not any(torch.equal(a, b) for a, b in zip(first, images(4)))
    two_workers = images(3, workers=2)
    assert torch.equal(two_workers[0], first[0]) and torch.equal(two_workers[2], first[1])
    assert not torch.equal(two_workers[1], first[1])


def test_evaluate_prints_a_per_organ_table(tiny_dataset, tmp_path):
    train, val = tiny_dataset
    model = tmp_path / "m.safetensors"
    assert _train_cli("fit", "--train", str(train), "-o", str(model), "--epochs", "1", "--workdir", str(tmp_path / "run"), *TINY_ARGS).returncode == 0
    result = _train_cli("evaluate", str(model), str(val), "--json", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    assert "| liver | 1 |" in result.stdout and "| spleen | 1 |" in result.stdout
    assert "right_kidney" not in result.stdout  # the validation case does not label the kidneys
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert set(scores["val"]) == {"liver", "spleen"}
    assert 0.0 <= scores["val"]["liver"]["dice"] <= 1.0


def test_the_evaluation_table_counts_each_outcome_and_averages_what_is_defined():
    """Liver: found once, rightly absent once, missed once, drawn where absent once; the spleen only rightly absent."""
    inf = float("inf")
    found = {"status": "compared", "dice": 0.9, "hd95": 2.0, "assd": 1.0, "nsd": 0.8}
    absent = {"status": "both_empty", "dice": None, "hd95": None, "assd": None, "nsd": None}
    missed = {"status": "prediction_empty", "dice": 0.0, "hd95": inf, "assd": inf, "nsd": 0.0}
    false = {"status": "reference_empty", "dice": 0.0, "hd95": inf, "assd": inf, "nsd": 0.0}
    results = {"a": {"liver": found, "spleen": absent}, "b": {"liver": absent}, "c": {"liver": missed}, "d": {"liver": false}}
    lines = organ_table(results).splitlines()
    assert lines[0] == "| organ | cases | found | absent | missed | false | dice | hd95 | assd | nsd |"
    assert lines[2:] == ["| liver | 4 | 1 | 1 | 1 | 1 | 0.450 | 2.000 | 1.000 | 0.400 |",
                         "| spleen | 1 | 0 | 1 | 0 | 0 | - | - | - | - |"]


def test_distributed_training_with_two_cpu_processes(tiny_dataset, tmp_path):
    train, val = tiny_dataset
    torchrun = Path(sys.executable).with_name("torchrun")
    result = _train_cli("fit", "--train", str(train), "--validate", str(val), "-o", str(tmp_path / "ddp.safetensors"),
                        "--epochs", "1", "--workdir", str(tmp_path / "run"), "--device", "cpu", *TINY_ARGS,
                        launcher=(str(torchrun), "--standalone", "--nproc_per_node=2"))
    assert result.returncode == 0, result.stderr[-2000:]
    bundle = load_bundle(tmp_path / "ddp.safetensors")
    assert bundle.metadata["training"]["train_cases"] == ["liver_only", "upper"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 1  # only the first process logs


@pytest.mark.parametrize("problem", ["empty", "outside_ids", "grid_mismatch", "broken_ct"])
def test_bad_training_data_is_refused_naming_the_case(tmp_path, problem):
    root = tmp_path / "data"
    root.mkdir()
    if problem != "empty":
        case = _tiny_case(root, "bad_case", (slice(20, 60), slice(10, 50), slice(50, 90)), ["liver"])
        if problem == "outside_ids":
            label = nib.load(str(case / "label.nii.gz"))
            array = np.asarray(label.dataobj).copy()
            array[0, 0, 0] = 13  # e.g. a FLARE22 id that was not mapped
            nib.save(nib.Nifti1Image(array, label.affine), str(case / "label.nii.gz"))
        elif problem == "grid_mismatch":
            label = nib.load(str(case / "label.nii.gz"))
            nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:-5], label.affine), str(case / "label.nii.gz"))
        elif problem == "broken_ct":
            data = (case / "ct.nii.gz").read_bytes()
            (case / "ct.nii.gz").write_bytes(data[: len(data) // 3])
    result = _train_cli("fit", "--train", str(root), "-o", str(tmp_path / "m.safetensors"), "--epochs", "1",
                        "--workdir", str(tmp_path / "run"), *TINY_ARGS)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("training")]
    assert len(lines) == 1 and lines[0].startswith("abdoseg-train: error: ")
    assert ("bad_case" in lines[0]) if problem != "empty" else ("no training cases" in lines[0])
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--workers", "-1", "--workers must be 0 or more, not -1."),
    ("--field-of-view-probability", "2", "--field-of-view-probability must lie between 0 and 1, not 2.0."),
    ("--flip-probability", "-0.5", "--flip-probability must lie between 0 and 1, not -0.5."),
    ("--spacing", "30", "--spacing must lie between 0.3 and 10 mm, not 30."),  # a bundle of 30 mm would be refused when read
    ("--width", "0", "--width must lie between 1 and 64, not 0."),
])
def test_bad_training_options_are_refused_in_one_sentence(tiny_dataset, tmp_path, capsys, option, value, message):
    assert train_main(["fit", "--train", str(tiny_dataset[0]), "-o", str(tmp_path / "m.safetensors"), option, value]) == 1
    assert capsys.readouterr().err.strip() == f"abdoseg-train: error: {message}"
    assert not (tmp_path / "m.safetensors").exists()


def _sample_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A crop of the sample holding all four organs: CT (int16), reference labels (AbdoSeg ids), affine."""
    crop = (slice(10, 100), slice(20, 80), slice(80, 100))
    ct = nib.load(str(SAMPLE_CT))
    offset = np.eye(4)
    offset[:3, 3] = [s.start for s in crop]
    labels = np.asarray(nib.load(str(SAMPLE_REFERENCE)).dataobj)[crop].astype(np.uint8)
    return np.asarray(ct.dataobj)[crop].astype(np.int16), labels, ct.affine @ offset


def _to_ids(labels: np.ndarray, ours_to_theirs: dict[int, int]) -> np.ndarray:
    out = np.zeros(labels.shape, np.uint8)
    for ours, theirs in ours_to_theirs.items():
        out[labels == ours] = theirs
    return out


@pytest.fixture(scope="module")
def dataset_layouts(tmp_path_factory) -> tuple[np.ndarray, dict[tuple[Path, str | None], tuple[int, ...]]]:
    """One crop of the sample (all four organs) written in every dataset layout.

    Returns the crop's labels in AbdoSeg ids, shape (I, J, K), and {(root, mapping preset):
    the organ ids that layout labels}.
    """
    import SimpleITK as sitk

    tmp_path = tmp_path_factory.mktemp("layouts")
    ct, labels, affine = _sample_arrays()
    save = lambda array, path: nib.save(nib.Nifti1Image(array, affine), str(path))  # noqa: E731
    # nnU-Net v2: FLARE22 ids (liver 1, right kidney 2, spleen 3, left kidney 13), names in dataset.json.
    nnunet = tmp_path / "Dataset022_FLARE"
    (nnunet / "imagesTr").mkdir(parents=True)
    (nnunet / "labelsTr").mkdir()
    save(ct, nnunet / "imagesTr" / "FLARE_001_0000.nii.gz")
    save(_to_ids(labels, {1: 1, 2: 2, 3: 13, 4: 3}), nnunet / "labelsTr" / "FLARE_001.nii.gz")
    nnunet_names = {"background": 0, "liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4, "left kidney": 13}
    (nnunet / "dataset.json").write_text(json.dumps({"labels": nnunet_names}))
    # Decathlon Task09: spleen only, labels {id: name}.
    decathlon = tmp_path / "Task09_Spleen"
    (decathlon / "imagesTr").mkdir(parents=True)
    (decathlon / "labelsTr").mkdir()
    save(ct, decathlon / "imagesTr" / "spleen_1.nii.gz")
    save((labels == 4).astype(np.uint8), decathlon / "labelsTr" / "spleen_1.nii.gz")
    (decathlon / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "spleen"}}))
    # images/ + labels/ with BTCV ids and a preset.
    pairs = tmp_path / "btcv"
    (pairs / "images").mkdir(parents=True)
    (pairs / "labels").mkdir()
    save(ct, pairs / "images" / "img0001.nii.gz")
    save(_to_ids(labels, {1: 6, 2: 2, 3: 3, 4: 1}), pairs / "labels" / "img0001.nii.gz")
    # AbdoSeg case folder: AbdoSeg ids, case.json names the organs it labels.
    plain = tmp_path / "plain"
    plain.mkdir()
    save(ct, plain / "ct.nii.gz")
    save(np.where(np.isin(labels, (1, 3)), labels, 0).astype(np.uint8), plain / "label.nii.gz")
    (plain / "case.json").write_text(json.dumps({"labelled": ["liver", "left_kidney"]}))
    # TotalSegmentator subject: one mask per structure, the left kidney missing.
    subjects = tmp_path / "totalseg"
    (subjects / "s0001" / "segmentations").mkdir(parents=True)
    save(ct, subjects / "s0001" / "ct.nii.gz")
    for name, label in (("liver", 1), ("kidney_right", 2), ("spleen", 4)):
        save((labels == label).astype(np.uint8), subjects / "s0001" / "segmentations" / f"{name}.nii.gz")
    # 3D-IRCADb patient: DICOM series of the CT and of the liver mask (0/255).
    patients = tmp_path / "ircad"
    for folder, array in (("PATIENT_DICOM", ct), ("MASKS_DICOM/liver", (labels == 1).astype(np.int16) * 255)):
        (patients / "p1" / folder).mkdir(parents=True)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing([float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)])
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(array.shape[2]):
            sl = image[:, :, k]
            sl.SetMetaData("0020|0013", str(k + 1))
            sl.SetMetaData("0020|0032", f"0\\0\\{k * 3.0}")
            # Written explicitly: run alone, GDCM writes these slices as secondary capture, without orientation or spacing.
            sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
            sl.SetMetaData("0028|0030", "\\".join(f"{s:g}" for s in image.GetSpacing()[1::-1]))
            sl.SetMetaData("0020|000e", "1.2.3." + str(len(folder)))
            writer.SetFileName(str(patients / "p1" / folder / f"{k:03d}.dcm"))
            writer.Execute(sl)

    return labels, {
        (nnunet, None): (1, 2, 3, 4),
        (decathlon, None): (4,),
        (pairs, "btcv"): (1, 2, 3, 4),
        (subjects, None): (1, 2, 4),
        (patients, None): (1,),
        (plain, None): (1, 3),
    }


def test_dataset_layouts_map_labels_to_abdoseg_ids(dataset_layouts):
    labels, expected = dataset_layouts
    for (root, preset), labelled in expected.items():
        cases = discover_cases(root, parse_mapping(preset) if preset else None)
        assert len(cases) == 1 and cases[0].labelled == labelled, root.name
        loaded = cases[0].load_labels().array
        want = np.where(np.isin(labels, labelled), labels, 0)
        np.testing.assert_array_equal(np.asarray(loaded), want, err_msg=root.name)
        assert set(np.unique(want)) == {0, *labelled}  # every labelled organ is in the crop


def test_evaluate_scores_each_layout_against_its_organs_in_abdoseg_ids(dataset_layouts):
    """A segmenter that returns the true labels (AbdoSeg ids) scores Dice 1 on exactly the labelled organs."""
    labels, expected = dataset_layouts
    for (root, preset), labelled in expected.items():
        cases = discover_cases(root, parse_mapping(preset) if preset else None)
        results = score_cases(cases, lambda ct: ct.with_array(labels))
        assert list(results) == [cases[0].name]
        scores = results[cases[0].name]
        assert set(scores) == {organ.name for organ in ORGANS if organ.label in labelled}, root.name
        assert all(metrics["dice"] == 1.0 and metrics["hd95"] == 0.0 for metrics in scores.values()), (root.name, scores)


def test_label_mapping_from_a_config_file(tmp_path):
    mapping_file = tmp_path / "btcv.json"
    mapping_file.write_text(json.dumps({"6": "liver", "2": 2, "3": "left_kidney", "1": "spleen"}))
    assert parse_mapping(str(mapping_file)) == parse_mapping("btcv") == {6: 1, 2: 2, 3: 3, 1: 4}
    mapping_file.write_text(json.dumps(["not", "a", "mapping"]))
    with pytest.raises(AbdoSegError, match="one JSON object"):
        parse_mapping(str(mapping_file))


def test_crops_centre_on_each_labelled_organ_equally_often():
    """A big liver and a small kidney: organ-centred crops pick each organ half of the time."""
    labels = torch.zeros(60, 60, 60, dtype=torch.uint8)
    labels[5:45, 5:45, 5:45] = 1  # 64000 voxels
    labels[50:54, 50:54, 50:54] = 2  # 64 voxels
    case = PreparedCase("two", torch.zeros(labels.shape), labels, (1, 2, 3, 4), np.eye(4))
    rng = np.random.default_rng(0)
    centres = [int(random_crop(case, (16, 16, 16), rng, foreground_fraction=1.0)[1][8, 8, 8]) for _ in range(400)]
    assert set(centres) == {1, 2}
    assert 0.4 < centres.count(2) / len(centres) < 0.6
    chosen = {int(random_crop(case, (16, 16, 16), rng, foreground_fraction=1.0, organ=2)[1][8, 8, 8]) for _ in range(50)}
    assert chosen == {2}


def test_fine_tuning_starts_from_a_bundle_and_records_it(tiny_dataset, tmp_path):
    train, val = tiny_dataset
    first = tmp_path / "first.safetensors"
    config = TrainConfig(width=4, depth=2, convs_per_stage=(1, 1, 1), patch=(32, 32, 32), inference_patch=(96, 96, 64),
                         epochs=1, iterations_per_epoch=1, learning_rate=1e-3, name="first")
    fit(discover_cases(train), [], config, first, tmp_path / "run1")
    config.name, config.learning_rate = "tuned", 0.0  # a zero learning rate keeps the weights exactly
    tuned = tmp_path / "tuned.safetensors"
    fit(discover_cases(train), [], config, tuned, tmp_path / "run2", init=first)
    start, end = load_bundle(first), load_bundle(tuned)
    assert end.metadata["training"]["initialised_from"] == start.model_id
    for key, value in start.network.state_dict().items():
        torch.testing.assert_close(end.network.state_dict()[key], value)
    wider = TrainConfig(width=8, depth=2, convs_per_stage=(1, 1, 1), patch=(32, 32, 32), epochs=1, iterations_per_epoch=1)
    with pytest.raises(AbdoSegError, match="another architecture"):
        fit(discover_cases(train), [], wider, tmp_path / "x.safetensors", tmp_path / "run3", init=first)


def test_keep_last_exports_the_last_epoch_with_its_validation(tiny_dataset, tmp_path):
    train, val = tiny_dataset
    config = TrainConfig(width=4, depth=2, convs_per_stage=(1, 1, 1), patch=(32, 32, 32), inference_patch=(96, 96, 64),
                         epochs=2, iterations_per_epoch=1, learning_rate=1e-2, validate_every=1, keep="last")
    best = fit(discover_cases(train), discover_cases(val), config, tmp_path / "last.safetensors", tmp_path / "run")
    assert best["epoch"] == 2 and "liver" in best["dice"]
    final = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["network"]
    exported = load_bundle(tmp_path / "last.safetensors")
    assert exported.metadata["validation"]["epoch"] == 2
    for key, value in final.items():
        torch.testing.assert_close(exported.network.state_dict()[key], value)


def test_export_of_a_run_without_validation_writes_its_last_epoch_as_fit_did(tiny_dataset, tmp_path):
    """No validation chose an epoch, so ``abdoseg-train export CHECKPOINT`` writes what fit wrote: the last
    network, not the weights the run started from."""
    train, _ = tiny_dataset
    config = TrainConfig(width=4, depth=2, convs_per_stage=(1, 1, 1), patch=(32, 32, 32), inference_patch=(96, 96, 64),
                         epochs=2, iterations_per_epoch=1, learning_rate=1e-2)
    fit(discover_cases(train), [], config, tmp_path / "fit.safetensors", tmp_path / "run")
    assert train_main(["export", str(tmp_path / "run" / "checkpoint.pt"), "-o", str(tmp_path / "exported.safetensors"), "--name", "renamed"]) == 0
    written, exported = load_bundle(tmp_path / "fit.safetensors"), load_bundle(tmp_path / "exported.safetensors")
    assert (written.metadata["name"], exported.metadata["name"]) == (TrainConfig().name, "renamed")
    assert exported.metadata["validation"] == written.metadata["validation"] == {"epoch": 2, "note": NO_VALIDATION_NOTE}
    for key, value in written.network.state_dict().items():
        torch.testing.assert_close(exported.network.state_dict()[key], value)


def test_patches_draw_each_organ_equally_often_even_when_few_cases_label_it():
    """Eight liver cases, one of which also labels the spleen: half the draws centre on the spleen."""
    def case(name: str, organs: tuple[int, ...]) -> PreparedCase:
        labels = torch.zeros(8, 8, 8, dtype=torch.uint8)
        for organ in organs:
            labels[organ, :, :] = organ
        return PreparedCase(name, torch.zeros(labels.shape), labels, organs, np.eye(4))

    cases = [case(f"liver{i}", (1,)) for i in range(7)] + [case("both", (1, 4))]
    rng = np.random.default_rng(0)
    draws = [draw_case(cases, [], 0.5, rng) for _ in range(800)]
    organs = [organ for _, organ in draws]
    assert 0.45 < organs.count(4) / len(organs) < 0.55
    assert all(drawn.name == "both" for drawn, organ in draws if organ == 4)
    assert {draw_case(cases, [], 0.5, rng, organs=frozenset({4}))[1] for _ in range(50)} == {4}  # a second stage's organs only
    unlabelled = [PreparedCase("empty", torch.zeros(4, 4, 4), torch.zeros(4, 4, 4, dtype=torch.uint8), (1,), np.eye(4))]
    assert draw_case(unlabelled, [], 0.5, rng) == (unlabelled[0], None)


def test_negative_patches_come_from_each_case_in_proportion_to_its_organ_free_body():
    """Two real cases of 3 mm voxels, each a liver slab at one end of a body of soft tissue: a long
    body (90 slices) and a short one (30). Body voxels more than 60 mm from the liver, sampled on
    every second voxel (6 mm apart; the liver's last sample is slice 8): slices 30-88, 10 x 10 x 30
    samples, in the long case; none in the short one, whose farthest samples (at least 90 % of
    the largest distance: slices 26 and 28, 10 x 10 x 2) stand in. The long case gives 15/16 of
    the negative patches, where a uniform draw gave half."""
    def case(name: str, slices: int) -> PreparedCase:
        image = torch.full((20, 20, slices), 0.2)  # soft tissue, well above the bottom of the window
        labels = torch.zeros(image.shape, dtype=torch.uint8)
        labels[:, :, :10] = 1
        return PreparedCase(name, image, labels, (1,), np.diag([3.0, 3.0, 3.0, 1.0]))

    cases = [case("long", 90), case("short", 30)]
    negatives = NegativeCentres()
    assert [negatives.weight(c) for c in cases] == [3000.0, 200.0]
    rng = np.random.default_rng(0)
    draws = [draw_case(cases, [], 0.5, rng, negative_fraction=1.0, negatives=negatives) for _ in range(2100)]
    assert all(organ == NO_ORGAN for _, organ in draws)
    share = sum(drawn.name == "long" for drawn, _ in draws) / len(draws)
    assert abs(share - 15 / 16) < 0.015
    uniform = [draw_case(cases, [], 0.5, rng, negative_fraction=1.0)[0].name for _ in range(2100)]
    assert abs(uniform.count("long") / len(uniform) - 0.5) < 0.04


def test_negative_patches_are_centred_far_from_every_organ_and_draw_maps_without_organs():
    """With every patch a negative one, both TotalSegmentator maps are drawn, the pelvis-only s0000
    too, and each patch is centred more than 60 mm from every organ (measured on every second voxel:
    within 6 mm of that on the full grid); the patch's centre is background."""
    data = Path(__file__).resolve().parent / "Data" / "anatomy_totalseg"
    spec = Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0))
    maps = [load_anatomy(discover_anatomy(data / f"{name}_anatomy.nii.gz")[0], spec) for name in ("s0328", "s0000")]
    distance = {case.name: ndimage.distance_transform_edt(case.labels == 0, sampling=3.0) for case in maps}
    augment = Augmenter((32, 32, 32), seed=2, rotate_deg=0.0, scale=0.0, flip_probability=0.0, spec=spec,
                        field_of_view_probability=0.0)
    rng = np.random.default_rng(0)
    drawn = []
    for _ in range(30):
        case, organ = draw_case([], maps, 0.5, rng, negative_fraction=1.0)
        assert organ == NO_ORGAN
        centre = augment.centre(case, organ)
        assert distance[case.name][tuple(centre)] > 54 and case.structures[tuple(centre)] > 0  # in the body
        drawn.append(case.name)
    assert set(drawn) == {"s0328", "s0000"}
    _, labels, _ = augment(maps[0], NO_ORGAN)
    assert labels[16, 16, 16] == 0
