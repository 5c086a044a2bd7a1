"""Training the second stage (``abdoseg-train fit --stage fine --coarse BUNDLE``): crops around organs as the first
stage would place them, and a two-stage bundle that ``segment`` runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors import safe_open
from scipy import ndimage

from abdoseg_train import coarse_prior, patches
from abdoseg_train.cases import discover_cases
from abdoseg_train.cli import main as train_main
from abdoseg_train.fine_crops import MARGIN_RANGE, organ_crop, window_centre
from abdoseg_train.fit import INPUT_WEIGHT, TrainConfig, _initial_weights, fit
from abdoseg_train.prepared import PreparedCase
from AbdoSegLib.cli import main as abdoseg
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.inference import fine_stage
from AbdoSegLib.inference.predict import segment
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.model.bundle import FineStage, load_bundle, save_bundle
from AbdoSegLib.model.bundle_schema import TWO_STAGE_VERSION
from AbdoSegLib.model.preprocessing import Preprocessing
from AbdoSegLib.model.vnet import VNet
from AbdoSegLib.outputs import LABELS_FILE
from AbdoSegLib.resources import DEFAULT_BUNDLE
from conftest import voxel_world
from test_renal_sinus import kidney_with_hilum
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


def test_a_crop_whose_scan_ends_in_the_organ_keeps_organ_voxels_on_both_sides_of_the_moved_face():
    case, rng = _case(), np.random.default_rng(2)
    whole = organ_crop(case, 1, 0.0, 0.0, np.random.default_rng(2))  # the organ's own box: x 5-14, y 10-19, z 0-9
    assert whole.labels.shape == (10, 10, 10)
    moved = {0: 0, 1: 0, 2: 0}
    for _ in range(300):
        cut = organ_crop(case, 1, 0.0, 0.0, rng, scan_edge_probability=1.0)
        shorter = [axis for axis in range(3) if cut.labels.shape[axis] < 10]
        assert len(shorter) == 1 and 2 <= cut.labels.shape[shorter[0]] <= 8  # 20-80 % of the organ's 10 voxels
        assert torch.all(cut.labels == 1)  # the crop holds only organ: the scan ends inside it
        moved[shorter[0]] += 1
    assert moved[2] > moved[0] + moved[1]  # axial ends two times in three


def test_a_patch_lies_on_its_crop_as_an_inference_window_does():
    rng = np.random.default_rng(3)
    # 61 voxels along x fit in the 80-voxel patch: centred, 9 voxels of padding before as sliding_window pads
    # (19 // 2); 200 along y: one of the window starts 0, 60, 120 (stride 60), each window at start + 40.
    centres = np.array([window_centre((61, 200, 80), (80, 80, 80), 0.25, rng) for _ in range(300)])
    assert set(centres[:, 0]) == {40 - 9} and set(centres[:, 1]) == {40, 100, 160} and set(centres[:, 2]) == {40}
    # the crop's faces at the windows' faces: the first window starts at 0, the last ends at 200
    assert centres[:, 1].min() - 40 == 0 and centres[:, 1].max() + 40 == 200


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
    # its windows are its training patch (32), not the first stage's inference patch (64)
    assert (bundle.fine.spacing_mm, bundle.fine.crop_margin_mm, bundle.fine.patch_size) == ((2.5, 2.5, 2.5), 15.0, (32, 32, 32))
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
    assert train_main(["export", str(tmp_path / "run" / "checkpoint.pt"), "-o", str(tmp_path / "narrow.safetensors"),
                       "--crop-margin", "8"]) == 0  # a margin chosen on validation after the run
    narrow = load_bundle(tmp_path / "narrow.safetensors")
    assert narrow.fine.crop_margin_mm == 8.0 and narrow.metadata["training"]["fine_stage"]["crop_margin_mm"] == 15.0
    assert all(torch.equal(value, exported.fine.network.state_dict()[key]) for key, value in narrow.fine.network.state_dict().items())
    assert train_main(["export", str(tmp_path / "run" / "checkpoint.pt"), "-o", str(tmp_path / "wide.safetensors"),
                       "--crop-margin", "101"]) == 1
    assert not (tmp_path / "wide.safetensors").exists()

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
    (["--coarse-channel"], "--coarse-channel goes only with --stage fine"),
    (["--stage", "fine", "--coarse", str(DEFAULT_BUNDLE), "--prior-sinus-probability", "0.5"],
     "--prior-sinus-probability goes only with --coarse-channel"),
    (["--stage", "fine", "--coarse", str(DEFAULT_BUNDLE), "--coarse-channel", "--prior-sinus-probability", "1.5"],
     "--prior-sinus-probability must lie between 0 and 1"),
], ids=["fine_without_coarse", "coarse_without_fine", "negative_margin", "negative_error", "organs_without_fine", "prior_without_fine",
        "sinus_without_prior", "sinus_beyond_one"])
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


def _sphere(radius_mm: float, spacing_mm: float, size: int) -> np.ndarray:
    """A ball of ``radius_mm`` at the centre of a cube of ``size`` voxels of ``spacing_mm``."""
    grid = (np.indices((size,) * 3) - (size - 1) / 2) * spacing_mm
    return np.sqrt((grid**2).sum(axis=0)) <= radius_mm


def test_the_simulated_first_stage_probability_is_the_organ_blurred_shifted_and_drawn_too_wide_or_narrow():
    """A 25 mm ball on a 1.5 mm grid: the prior is high inside, -1 far outside, its 0.5 level near the surface but
    different each time, and empty for no organ."""
    mask = _sphere(25.0, 1.5, 64)
    centre, far = _sphere(10.0, 1.5, 64), ~_sphere(45.0, 1.5, 64)  # 15 mm inside; 20 mm beyond the surface and more
    dice = []
    for seed in range(40):
        prior = coarse_prior.simulated_prior(mask, 1.5, np.random.default_rng(seed)).numpy()
        assert prior.shape == mask.shape and prior.dtype == np.float32 and prior.min() >= -1 and prior.max() <= 1
        assert prior[centre].min() > 0.9
        drawn = prior > 0
        dice.append(2 * (drawn & mask).sum() / (drawn.sum() + mask.sum()))
        if not (drawn & ~mask).sum() > 0.05 * mask.sum():  # no blob spilled: nothing far away
            assert prior[far].max() == pytest.approx(-1.0, abs=1e-3)
    assert min(dice) > 0.8 and np.std(dice) > 0.01
    assert torch.equal(coarse_prior.simulated_prior(np.zeros((8, 8, 8), bool), 1.5, np.random.default_rng(0)), torch.full((8, 8, 8), -1.0))


def test_a_spilled_blob_adds_probability_outside_the_organ_only(monkeypatch):
    mask = _sphere(25.0, 1.5, 64)
    for seed in range(5):
        monkeypatch.setattr(coarse_prior, "SPILL_PROBABILITY", 0.0)
        plain = coarse_prior.simulated_prior(mask, 1.5, np.random.default_rng(seed))
        monkeypatch.setattr(coarse_prior, "SPILL_PROBABILITY", 1.0)
        spilled = coarse_prior.simulated_prior(mask, 1.5, np.random.default_rng(seed))
        assert torch.equal(spilled[mask], plain[mask]) and bool((spilled >= plain).all())
        added = (spilled > 0) & ~(plain > 0)
        assert added.sum() * 1.5**3 > 4 / 3 * np.pi * 2.5**3  # at least a ball of 2.5 mm (half the smallest semi-axis)


def test_a_spilled_tail_is_the_blob_drawn_long_along_one_axis(monkeypatch):
    """With the same draws, a tail covers its blob and reaches at least TAIL_RADIUS_MM's low end (20 mm) along an axis."""
    mask = _sphere(25.0, 1.5, 96)
    monkeypatch.setattr(coarse_prior, "SPILL_PROBABILITY", 1.0)
    for seed in range(5):
        monkeypatch.setattr(coarse_prior, "TAIL_SHARE", 0.0)
        blob = coarse_prior.simulated_prior(mask, 1.5, np.random.default_rng(seed))
        monkeypatch.setattr(coarse_prior, "TAIL_SHARE", 1.0)
        tail = coarse_prior.simulated_prior(mask, 1.5, np.random.default_rng(seed))
        assert bool((tail >= blob).all()) and torch.equal(tail[mask], blob[mask])
        added = ((tail > -1) & ~torch.from_numpy(mask)).numpy()
        extents = [np.ptp(np.flatnonzero(added.any(axis=tuple(a for a in range(3) if a != axis)))) * 1.5 for axis in range(3)]
        assert max(extents) >= coarse_prior.TAIL_RADIUS_MM[0] and added.sum() > ((blob > -1) & ~torch.from_numpy(mask)).sum()


def test_a_kidneys_prior_covering_its_sinus_adds_probability_in_the_hilum_and_nowhere_far_from_it(monkeypatch):
    """The wedge-shaped hilum of a ball kidney (radius 30 mm on a 3 mm grid): with the same draws, covering the sinus
    raises the prior, never lowers it, fills the hilum's inner part and leaves everything 18 mm from the kidney as it was."""
    kidney, wedge = kidney_with_hilum()
    deep = wedge & (np.indices(wedge.shape)[0] >= 16)
    far = ndimage.distance_transform_edt(~(kidney | wedge)) > 6
    monkeypatch.setattr(coarse_prior, "SPILL_PROBABILITY", 0.0)
    for seed in range(5):
        plain = coarse_prior.simulated_prior(kidney, 3.0, np.random.default_rng(seed)).numpy()
        covered = coarse_prior.simulated_prior(kidney, 3.0, np.random.default_rng(seed), cover_sinus=True).numpy()
        assert np.all(covered >= plain - 1e-6) and np.array_equal(covered[far], plain[far])
        assert covered[deep].min() > 0.5 and plain[deep].mean() < 0.5


@pytest.mark.parametrize("organ", [1, 2], ids=["liver", "right_kidney"])
def test_second_stage_patches_cover_the_sinus_in_the_prior_of_a_kidney_only(organ, monkeypatch):
    """A ball organ with a hilum (2 mm voxels), with the option at 1 against nearly 0 (the same draws): the CT channel
    and labels are the same; a kidney's prior only rises, by more than 0.5 somewhere outside the kidney; a liver's
    is unchanged (no blob spilled: its place follows the organ's outline)."""
    monkeypatch.setattr(coarse_prior, "SPILL_PROBABILITY", 0.0)
    shape, _ = kidney_with_hilum()
    labels = torch.from_numpy(shape.astype(np.uint8) * organ)
    case = PreparedCase("ball", torch.linspace(-1, 1, labels.numel()).reshape(labels.shape), labels, (organ,), np.diag([2.0, 2.0, 2.0, 1.0]))
    config = TrainConfig(spacing_mm=(2.0, 2.0, 2.0), **TINY, patch=(32, 32, 32), batch_size=4, stage="fine", coarse_channel=True,
                         field_of_view_probability=0.0, negative_fraction=0.0, flip_probability=0.0)
    rarely, always = (next(iter(patches.PatchBatches([case], [], dataclasses.replace(config, prior_sinus_probability=probability),
                                                     rank=0, epoch=1))) for probability in (1e-9, 1.0))
    torch.testing.assert_close(always[0][:, :1], rarely[0][:, :1])
    assert torch.equal(always[1], rarely[1])
    raised = always[0][:, 1] - rarely[0][:, 1]
    if organ == 1:
        assert torch.equal(raised, torch.zeros_like(raised))
    else:
        assert raised.min() > -1e-6 and all(raised[n][always[1][n] == 0].max() > 0.5 for n in range(4))


def test_second_stage_patches_with_the_coarse_channel_carry_the_prior_of_the_organ_they_surround():
    """A 20 mm ball of liver in a 96 mm cube of 2 mm voxels, cut to crops around it of 32 voxels."""
    labels = torch.from_numpy(_sphere(20.0, 2.0, 48).astype(np.uint8))
    case = PreparedCase("ball", torch.linspace(-1, 1, labels.numel()).reshape(labels.shape), labels, (1,), np.diag([2.0, 2.0, 2.0, 1.0]))
    config = TrainConfig(spacing_mm=(2.0, 2.0, 2.0), **TINY, patch=(32, 32, 32), batch_size=4, stage="fine", coarse_channel=True,
                         field_of_view_probability=0.0, negative_fraction=0.0)
    images, labels, _ = next(iter(patches.PatchBatches([case], [], config, rank=0, epoch=1)))
    assert images.shape == (4, 2, 32, 32, 32)
    torch.testing.assert_close(images[:, :1], next(iter(patches.PatchBatches([case], [], dataclasses.replace(config, coarse_channel=False),
                                                                              rank=0, epoch=1)))[0])  # the CT channel as without the prior
    prior, liver = images[:, 1], labels == 1
    assert liver.any() and prior[liver].mean() > 0.5 and prior[~liver].mean() < prior[liver].mean() - 0.5


def test_a_second_stage_with_the_coarse_channel_starts_from_a_one_channel_network_and_trains_without_validation(tmp_path):
    """The CT's input weights are kept and the prior's start at zero; a two-stage bundle starts it from its second
    stage; validation cases are refused (its validation is the two-stage bundle's); a two-stage bundle given as the
    first stage has its second stage and that stage's records replaced."""
    config = TrainConfig(spacing_mm=(2.5, 2.5, 2.5), **TINY, stage="fine", coarse_bundle=str(DEFAULT_BUNDLE), coarse_channel=True)
    hu_window = load_bundle(DEFAULT_BUNDLE).preprocessing.hu_window
    single = _first_stage_network(tmp_path, 5.0, hu_window)
    state, model_id = _initial_weights(single, config)
    source = load_bundle(single).network.state_dict()
    assert state[INPUT_WEIGHT].shape[1] == 2 and model_id == load_bundle(single).model_id
    assert torch.equal(state[INPUT_WEIGHT][:, :1], source[INPUT_WEIGHT]) and not state[INPUT_WEIGHT][:, 1:].any()
    VNet(config.network_config).load_state_dict(state)

    torch.manual_seed(6)
    second, default = VNet(config.network_config), load_bundle(DEFAULT_BUNDLE)
    two_stage = tmp_path / "two.safetensors"
    save_bundle(two_stage, default.network, default.preprocessing, default.patch_size, "default-two", "2026-12-01",
                training=default.metadata["training"], validation=dict(default.metadata["validation"], fine_stage={"earlier": True}),
                fine=FineStage(second, (2.5,) * 3, 10.0, (32, 32, 32), organs=("liver",), coarse_channel=True))
    state, _ = _initial_weights(two_stage, config)
    assert all(torch.equal(value, second.state_dict()[key]) for key, value in state.items())

    cases = tmp_path / "cases"
    case = _tiny_case(cases, "upper", (slice(20, 100), slice(10, 90), slice(50, 100)), ["liver", "spleen"])
    with pytest.raises(AbdoSegError, match="validated as a two-stage bundle"):
        fit(discover_cases(cases), discover_cases(cases), config, tmp_path / "m.safetensors", tmp_path / "run")
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "run").exists()

    torch.set_num_threads(2)
    config = dataclasses.replace(config, coarse_bundle=str(two_stage), patch=(32, 32, 32), inference_patch=(64, 64, 64), epochs=1,
                                 iterations_per_epoch=2, learning_rate=1e-3, fine_organs=("liver", "spleen"), keep="last")
    fit(discover_cases(cases), [], config, tmp_path / "m.safetensors", tmp_path / "run", init=single)
    bundle = load_bundle(tmp_path / "m.safetensors")
    assert bundle.fine.coarse_channel and bundle.fine.network.config.in_channels == 2 and bundle.fine.organs == ("liver", "spleen")
    assert all(torch.equal(value, default.network.state_dict()[key]) for key, value in bundle.network.state_dict().items())
    assert bundle.metadata["training"]["fine_stage"]["coarse_channel"] is True
    assert bundle.metadata["training"]["fine_stage"]["coarse_model"] == load_bundle(two_stage).model_id
    assert "earlier" not in bundle.metadata["validation"]["fine_stage"]  # the first stage's second stage is replaced
    ct = read_image(case / "ct.nii.gz")
    prediction = segment(ct, bundle, device="cpu")
    assert prediction.labels.same_grid(ct) and "fine" in prediction.timings_s
