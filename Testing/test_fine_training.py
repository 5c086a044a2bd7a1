"""Training the second stage (``abdoseg-train fit --stage fine --coarse BUNDLE``): crops around organs as the first
stage would place them, and a two-stage bundle that ``segment`` runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from abdoseg_train import patches
from abdoseg_train.cases import discover_cases
from abdoseg_train.cli import main as train_main
from abdoseg_train.fine_crops import MARGIN_RANGE, organ_crop
from abdoseg_train.fit import TrainConfig, fit
from abdoseg_train.prepared import PreparedCase
from AbdoSegLib.cli import main as abdoseg
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.inference import fine_stage
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.bundle import load_bundle, save_bundle
from AbdoSegLib.model.bundle_schema import TWO_STAGE_VERSION
from AbdoSegLib.model.preprocessing import Preprocessing
from AbdoSegLib.model.vnet import VNet
from AbdoSegLib.outputs import LABELS_FILE
from AbdoSegLib.resources import DEFAULT_BUNDLE
from conftest import voxel_world
from test_training import _tiny_case


def _case() -> PreparedCase:
    """40x30x20 voxels of 2 x 2 x 2.5 mm; a liver block at x 5-14, y 10-19, z 0-9 (it touches the bottom face)."""
    labels = torch.zeros((40, 30, 20), dtype=torch.uint8)
    labels[5:15, 10:20, 0:10] = 1
    image = torch.linspace(-1, 1, labels.numel()).reshape(labels.shape)
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = (-40.0, 7.0, 100.0)
    return PreparedCase("box", image, labels, (1,), affine)


def test_a_crop_without_localisation_error_holds_the_organ_and_a_margin_drawn_from_half_to_one_and_a_half():
    case, rng = _case(), np.random.default_rng(0)
    lows, highs = [], []
    for _ in range(200):
        cut = organ_crop(case, 1, margin_mm=10.0, error_mm=0.0, rng=rng)
        start = np.rint(np.linalg.solve(case.affine, cut.affine[:, 3])[:3]).astype(int)
        box = tuple(slice(a, a + n) for a, n in zip(start, cut.labels.shape))
        assert torch.equal(cut.image, case.image[box]) and torch.equal(cut.labels, case.labels[box])
        np.testing.assert_allclose(voxel_world(cut.affine, cut.labels.shape), voxel_world(case.affine, case.labels.shape)[box])
        lows.append(start)
        highs.append(start + np.array(cut.labels.shape))
    lows, highs = np.array(lows), np.array(highs)
    # margins of 5-15 mm: 2.5-7.5 voxels of 2 mm (rounded: 2-8), clipped at the bottom face z = 0
    assert lows[:, 0].min() >= 5 - 8 and lows[:, 0].max() <= 5 - 2 and highs[:, 0].min() >= 15 + 2 and highs[:, 0].max() <= 15 + 8
    assert np.all(lows[:, 2] == 0) and highs[:, 2].min() >= 10 + 2 and highs[:, 2].max() <= 10 + 6
    assert len(set(lows[:, 1])) > 3  # the margin varies
    assert MARGIN_RANGE == (0.5, 1.5)


def test_localisation_errors_move_each_face_of_the_crop():
    case, rng = _case(), np.random.default_rng(1)
    starts = [np.linalg.solve(case.affine, organ_crop(case, 1, 0.0, 6.0, rng).affine[:, 3])[0] for _ in range(300)]
    assert np.std(starts) == pytest.approx(3.0, rel=0.2)  # 6 mm of 2 mm voxels
    assert organ_crop(case, None, 10.0, 6.0, rng) is case and organ_crop(case, 4, 10.0, 6.0, rng) is case  # no organ: the whole case


TINY = dict(width=4, depth=2, convs_per_stage=(1, 1, 1))


def _first_stage_network(tmp_path, spacing_mm: float, hu_window: tuple[float, float]):
    """A single-stage bundle of the tiny architecture at ``spacing_mm``, to start a second stage from."""
    path = tmp_path / f"first-{spacing_mm:g}-{hu_window[0]:g}.safetensors"
    torch.manual_seed(5)
    save_bundle(path, VNet(TrainConfig(**TINY).network_config), Preprocessing((spacing_mm,) * 3, hu_window), (32, 32, 32), "tiny-first", "2026-12-01")
    return path


def test_smoke_fine_stage_training_exports_a_two_stage_bundle_that_segment_runs(tmp_path, monkeypatch):
    """Started from a first stage's network at 5 mm (same architecture and HU window), refining the liver
    and spleen only: its crops surround those, and ``segment`` runs it over those it finds."""
    torch.set_num_threads(2)
    cases = tmp_path / "cases"
    _tiny_case(cases, "upper", (slice(20, 100), slice(10, 90), slice(50, 100)), ["liver", "right_kidney", "left_kidney", "spleen"])
    validation = _tiny_case(tmp_path / "val", "val", (slice(20, 100), slice(10, 90), slice(40, 90)), ["liver", "spleen"])
    config = TrainConfig(spacing_mm=(2.5, 2.5, 2.5), **TINY, patch=(32, 32, 32), inference_patch=(64, 64, 64),
                         epochs=1, iterations_per_epoch=2, validate_every=1, learning_rate=1e-3, name="smoke-two-stage",
                         stage="fine", coarse_bundle=str(DEFAULT_BUNDLE), crop_margin_mm=15.0, fine_organs=("liver", "spleen"))
    out = tmp_path / "two-stage.safetensors"
    drawn = []
    monkeypatch.setattr(patches, "organ_crop", lambda case, organ, *rest: drawn.append(organ) or organ_crop(case, organ, *rest))
    init = _first_stage_network(tmp_path, 5.0, load_bundle(DEFAULT_BUNDLE).preprocessing.hu_window)
    fit(discover_cases(cases), discover_cases(validation), config, out, tmp_path / "run", init=init)
    assert drawn and set(drawn) <= {1, 4}  # liver and spleen crops only

    bundle, coarse = load_bundle(out), load_bundle(DEFAULT_BUNDLE)
    assert bundle.metadata["format_version"] == TWO_STAGE_VERSION
    assert all(torch.equal(value, coarse.network.state_dict()[key]) for key, value in bundle.network.state_dict().items())
    assert bundle.preprocessing == coarse.preprocessing and bundle.patch_size == coarse.patch_size
    assert (bundle.fine.spacing_mm, bundle.fine.crop_margin_mm, bundle.fine.patch_size) == ((2.5, 2.5, 2.5), 15.0, (64, 64, 64))
    record = bundle.metadata["training"]
    assert record["flip_probability"] == coarse.metadata["training"]["flip_probability"]  # the first stage's record stays on top
    assert record["fine_stage"]["coarse_model"] == coarse.model_id and record["fine_stage"]["hu_window"] == list(coarse.preprocessing.hu_window)
    assert record["fine_stage"]["initialised_from"] == load_bundle(init).model_id and bundle.fine.organs == ("liver", "spleen")
    assert set(bundle.metadata["validation"]["fine_stage"]["dice"]) == {"liver", "spleen"}
    assert train_main(["export", str(tmp_path / "run" / "checkpoint.pt"), "-o", str(tmp_path / "exported.safetensors")]) == 0
    exported = load_bundle(tmp_path / "exported.safetensors")
    assert exported.fine.network.config == bundle.fine.network.config and exported.metadata["fine"] == bundle.metadata["fine"]
    assert train_main(["export", str(tmp_path / "run" / "checkpoint.pt"), "-o", str(tmp_path / "spleen.safetensors"),
                       "--fine-organs", "spleen"]) == 0  # the measured choice: refine only where the stage wins
    assert load_bundle(tmp_path / "spleen.safetensors").fine.organs == ("spleen",)
    assert train_main(["export", str(tmp_path / "run" / "checkpoint.pt"), "-o", str(tmp_path / "half.safetensors"), "--half"]) == 0
    with safe_open(str(tmp_path / "half.safetensors"), framework="pt") as handle:  # both stages stored as float16
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {torch.float16}
    halved = load_bundle(tmp_path / "half.safetensors")
    assert all(torch.equal(value, exported.fine.network.state_dict()[key].half().float())
               for key, value in halved.fine.network.state_dict().items())
    assert train_main(["export", str(tmp_path / "run" / "checkpoint.pt"), "-o", str(tmp_path / "kidney.safetensors"),
                       "--fine-organs", "left_kidney"]) == 1
    assert not (tmp_path / "kidney.safetensors").exists()

    crops = []
    preprocess = fine_stage.preprocess
    monkeypatch.setattr(fine_stage, "preprocess", lambda image, spec: crops.append(image.shape) or preprocess(image, spec))
    ct = read_image(validation / "ct.nii.gz")
    prediction = segment(ct, bundle, device="cpu")
    assert len(crops) == sum(prediction.presence[name].found for name in ("liver", "spleen")) > 0
    assert prediction.labels.same_grid(ct) and "fine" in prediction.timings_s
    result = tmp_path / "segmented"
    assert abdoseg(["segment", str(validation / "ct.nii.gz"), "-o", str(result), "--model", str(out), "--progress", "none"]) == 0
    assert read_image(result / LABELS_FILE).same_grid(ct)


def test_a_second_stage_starts_only_from_a_network_with_its_architecture_and_hu_window(tmp_path):
    cases = tmp_path / "cases"
    _tiny_case(cases, "upper", (slice(20, 100), slice(10, 90), slice(50, 100)), ["liver"])
    config = TrainConfig(spacing_mm=(2.5, 2.5, 2.5), **TINY, patch=(32, 32, 32), epochs=1, iterations_per_epoch=1,
                         stage="fine", coarse_bundle=str(DEFAULT_BUNDLE))
    init = _first_stage_network(tmp_path, 5.0, (-100.0, 300.0))
    with pytest.raises(AbdoSegError, match="another architecture or preprocessing"):
        fit(discover_cases(cases), [], config, tmp_path / "m.safetensors", tmp_path / "run", init=init)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("arguments, phrase", [
    (["--stage", "fine"], "--stage fine needs --coarse BUNDLE"),
    (["--coarse", str(DEFAULT_BUNDLE)], "--coarse goes only with --stage fine"),
    (["--stage", "fine", "--coarse", str(DEFAULT_BUNDLE), "--crop-margin", "-1"], "--crop-margin must lie between 0 and 100 mm"),
    (["--stage", "fine", "--coarse", str(DEFAULT_BUNDLE), "--localisation-error", "-2"], "--localisation-error must be 0 or more"),
    (["--fine-organs", "spleen"], "--fine-organs goes only with --stage fine"),
], ids=["fine_without_coarse", "coarse_without_fine", "negative_margin", "negative_error", "organs_without_fine"])
def test_fine_stage_options_are_checked_before_any_work(tmp_path, capsys, arguments, phrase):
    (tmp_path / "maps").mkdir()
    code = train_main(["fit", "--synthetic", str(tmp_path / "maps"), "-o", str(tmp_path / "m.safetensors"), *arguments])
    assert code == 1
    assert phrase in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["maps"]


@pytest.mark.parametrize("stage, expected", [([], TrainConfig().negative_fraction), (["--stage", "fine", "--coarse", str(DEFAULT_BUNDLE)], 0.0)])
def test_negative_patches_are_drawn_for_the_first_stage_only_unless_asked(tmp_path, monkeypatch, stage, expected):
    """A crop of the second stage always holds an organ, so by default it trains on none far from every organ."""
    from abdoseg_train import commands

    cases = tmp_path / "cases"
    _tiny_case(cases, "case", (slice(20, 100), slice(10, 90), slice(50, 100)), ["liver"])
    configs = []
    monkeypatch.setattr(commands, "fit", lambda train, validation, config, *rest: configs.append(config) or {})
    assert train_main(["fit", "--train", str(cases), "-o", str(tmp_path / "model.safetensors"), *stage]) == 0
    assert train_main(["fit", "--train", str(cases), "-o", str(tmp_path / "other.safetensors"), "--negative-fraction", "0.3", *stage]) == 0
    assert [config.negative_fraction for config in configs] == [expected, 0.3]
