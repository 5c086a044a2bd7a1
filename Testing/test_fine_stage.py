"""The second stage of a two-stage bundle (issue 18): the bundle format (version 2), and refinement of each organ
found in a crop around it (``inference/fine_stage.py``): geometry on exactly-known inputs, and through ``segment``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from AbdoSegLib.cli import main
from AbdoSegLib.image import Image
from AbdoSegLib.inference import fine_stage, predict
from AbdoSegLib.inference.fine_stage import crop_box, name_cut_pieces, refine
from AbdoSegLib.inference.predict import count_windows, infer_probabilities, segment
from AbdoSegLib.inference.presence import FOUND, NOT_FOUND, OrganPresence
from AbdoSegLib.model.bundle import FineStage, load_bundle, save_bundle
from AbdoSegLib.model.bundle_schema import SINGLE_STAGE_VERSION, TWO_STAGE_VERSION
from AbdoSegLib.model.preprocessing import canonical, model_grid
from AbdoSegLib.model.vnet import VNet, VNetConfig
from AbdoSegLib.organs import NUM_CLASSES, ORGANS
from conftest import TINY_CONFIG, TINY_PATCH, TINY_PREPROCESSING
from test_bundle import _rewrite, _state
from test_bundle_schema import DELETE, _set, assert_refused_everywhere

FINE_CONFIG = VNetConfig(in_channels=2, width=4, depth=2, convs_per_stage=(1, 1, 1))
ORGAN = {organ.name: organ.label for organ in ORGANS}


def _random_network(config: VNetConfig, seed: int) -> VNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = VNet(config)
        for parameter in network.parameters():
            parameter.data.normal_(0.0, 0.3)
    return network.eval()


def _fine(network: VNet, **settings) -> FineStage:
    defaults = dict(spacing_mm=(2.0, 2.0, 2.0), crop_margin_mm=10.0, patch_size=(64, 64, 32), overlap=0.25,
                    organs=tuple(ORGAN), coarse_channel=network.config.in_channels == 2)
    return FineStage(network, **{**defaults, **settings})


@pytest.fixture(scope="module")
def two_stage_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("two_stage") / "two-stage.safetensors"
    fine = _fine(_random_network(FINE_CONFIG, 1), spacing_mm=(1.5, 1.5, 2.0), crop_margin_mm=12.5, organs=("liver", "spleen"))
    save_bundle(path, _random_network(TINY_CONFIG, 0), TINY_PREPROCESSING, TINY_PATCH, "tiny-two-stage", "2026-12-01", fine=fine)
    return path


# --- the bundle format ---------------------------------------------------------------------------------------------

def test_two_stage_bundle_round_trip_keeps_both_networks_and_the_fine_settings(two_stage_path):
    bundle = load_bundle(two_stage_path)
    assert bundle.metadata["format_version"] == TWO_STAGE_VERSION
    fine = bundle.fine
    assert (fine.spacing_mm, fine.crop_margin_mm, fine.patch_size, fine.overlap) == ((1.5, 1.5, 2.0), 12.5, (64, 64, 32), 0.25)
    assert (fine.organs, fine.coarse_channel, fine.network.config) == (("liver", "spleen"), True, FINE_CONFIG)
    assert not fine.network.training and not bundle.network.training
    for network, seed in ((bundle.network, 0), (fine.network, 1)):
        saved = _random_network(network.config, seed).state_dict()
        assert all(torch.equal(saved[key], value) for key, value in network.state_dict().items())
    assert set(_state(two_stage_path)) == set(bundle.network.state_dict()) | {f"fine.{key}" for key in fine.network.state_dict()}


def test_a_single_stage_bundle_is_written_as_version_1_and_loads_beside_the_two_stage_default(tmp_path, tiny_model_bundle, default_model_bundle):
    """The shipped default is two-stage (its second stage refines both kidneys and the spleen); its first stage written alone is a
    version 1 bundle, as every bundle before the second stage was, and runs with the same weights."""
    first_alone = tmp_path / "first-stage.safetensors"
    save_bundle(first_alone, default_model_bundle.network, default_model_bundle.preprocessing, default_model_bundle.patch_size,
                "first-stage", "2026-12-01", overlap=default_model_bundle.overlap)
    for bundle in (tiny_model_bundle, load_bundle(first_alone)):
        assert bundle.metadata["format_version"] == SINGLE_STAGE_VERSION
        assert bundle.fine is None and "fine" not in bundle.metadata
    assert all(torch.equal(value, default_model_bundle.network.state_dict()[key]) for key, value in load_bundle(first_alone).network.state_dict().items())
    assert default_model_bundle.metadata["format_version"] == TWO_STAGE_VERSION
    assert default_model_bundle.fine.organs == ("right_kidney", "left_kidney", "spleen")


def test_info_shows_both_stages(two_stage_path, capsys):
    assert main(["info", str(two_stage_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["architecture"]["config"]["in_channels"] == 1
    assert shown["fine"]["architecture"]["config"] == FINE_CONFIG.to_dict()
    assert shown["fine"]["spacing_mm"] == [1.5, 1.5, 2.0] and shown["fine"]["organs"] == ["liver", "spleen"]


BAD_FINE = {
    "no_fine_in_version_2": ("fine", DELETE),
    "fine_in_version_1": ("format_version", 1),
    "fine_a_list": ("fine", [1.5, 1.5, 1.5]),
    "spacing_zero": ("fine.spacing_mm", [0.0, 1.5, 1.5]),
    "margin_negative": ("fine.crop_margin_mm", -5.0),
    "margin_absurd": ("fine.crop_margin_mm", 1000.0),
    "patch_not_divisible": ("fine.patch_size", [62, 64, 32]),
    "overlap_one": ("fine.overlap", 1.0),
    "organs_empty": ("fine.organs", []),
    "organ_unknown": ("fine.organs", ["liver", "pancreas"]),
    "organ_twice": ("fine.organs", ["liver", "liver"]),
    "coarse_channel_a_number": ("fine.coarse_channel", 1),
    "channels_without_coarse_channel": ("fine.coarse_channel", False),
    "no_fine_architecture": ("fine.architecture", DELETE),
    "fine_classes_other": ("fine.architecture.config.num_classes", 3),
    "unknown_fine_key": ("fine.test_time_flips", True),
}


@pytest.mark.parametrize("field, value", BAD_FINE.values(), ids=BAD_FINE.keys())
def test_fine_fields_outside_the_schema_are_one_sentence_naming_the_field(tmp_path, two_stage_path, capsys, field, value):
    path = _rewrite(two_stage_path, tmp_path / "bad.safetensors", lambda metadata: _set(metadata, field, value))
    if field == "format_version":
        phrase = "has fine = {"
    elif field == "fine.coarse_channel" and value is False:
        phrase = "has fine.architecture.config.in_channels = 2; it must be 1 (one CT channel: coarse_channel is false)"
    else:
        phrase = f"has no {field}; a bundle needs " if value is DELETE else f"has {field} = {json.dumps(value)}; "
    assert_refused_everywhere(path, tmp_path, phrase, capsys=capsys)


def test_fine_weights_that_are_missing_or_not_finite_are_refused(tmp_path, two_stage_path, capsys):
    state = _state(two_stage_path)
    del state["fine.head.bias"]
    path = _rewrite(two_stage_path, tmp_path / "missing.safetensors", state=state)
    assert_refused_everywhere(path, tmp_path, "has weights that do not fit its architecture", "head.bias", capsys=capsys)
    state = _state(two_stage_path)
    state["fine.head.weight"].view(-1)[0] = float("nan")
    path = _rewrite(two_stage_path, tmp_path / "nan.safetensors", state=state)
    assert_refused_everywhere(path, tmp_path, "has weights['fine.head.weight'] = NaN or infinity in 1 of", capsys=capsys)


def test_a_fine_patch_not_divisible_is_not_saved(tmp_path):
    fine = _fine(VNet(FINE_CONFIG), patch_size=(30, 32, 32))
    with pytest.raises(ValueError, match="divisible by 4"):
        save_bundle(tmp_path / "m.safetensors", VNet(TINY_CONFIG), TINY_PREPROCESSING, TINY_PATCH, "x", "now", fine=fine)
    assert list(tmp_path.iterdir()) == []


# --- refinement on exactly-known inputs ------------------------------------------------------------------------------
# A 40x36x30 CT (1.5 x 1.5 x 2 mm, RAS) of 0 HU with a "true liver" block of 200 HU and a "true spleen" block of
# 300 HU at the face x = 39. The fine grid is the CT's own grid (same spacing), and the fine "network" (``infer``)
# is liver 0.7 / background 0.3 from 150 to 250 HU, spleen 1 above, background 1 elsewhere: its result is known exactly.

SPACING = (1.5, 1.5, 2.0)
SHAPE = (40, 36, 30)
TRUE_LIVER = (slice(8, 24), slice(6, 20), slice(5, 15))
TRUE_SPLEEN = (slice(30, 40), slice(10, 25), slice(10, 25))
HU_WINDOW = (-200.0, 400.0)


def _ct() -> Image:
    array = np.zeros(SHAPE, dtype=np.int16)
    array[TRUE_LIVER] = 200
    array[TRUE_SPLEEN] = 300
    return Image(array, np.diag([*SPACING, 1.0]))


def _known_infer(calls: list):
    def infer(volume: torch.Tensor) -> torch.Tensor:
        calls.append(volume.clone())
        hu = volume[0] * 300 + 100  # the window (-200, 400) scaled back
        probabilities = torch.zeros((NUM_CLASSES, *hu.shape))
        liver, spleen = (hu > 150) & (hu < 250), hu >= 250
        probabilities[0] = torch.where(liver, 0.3, torch.where(spleen, 0.0, 1.0))
        probabilities[ORGAN["liver"]][liver] = 0.7
        probabilities[ORGAN["spleen"]][spleen] = 1.0
        return probabilities
    return infer


def _first_stage():
    """Labels, margins, boxes of an imperfect first stage: liver shifted by 2 voxels, spleen short of the edge by
    2 voxels, and a right kidney (not refined) overlapping the true liver at x 20-23, with a margin 0.5 at y 18 and
    0.3 at y 19 there. The left kidney is refined but was not found."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    score = np.zeros(SHAPE, dtype=np.float16)
    blocks = {"liver": (slice(10, 26), slice(6, 18), slice(5, 15)), "spleen": (slice(32, 40), slice(12, 25), slice(10, 25)),
              "right_kidney": (slice(20, 28), slice(18, 24), slice(5, 10))}
    boxes = {}
    for name, block in blocks.items():
        labels[block], score[block] = ORGAN[name], 0.5
        boxes[ORGAN[name]] = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(block, SHAPE))
    score[20:28, 19, 5:10] = 0.3
    presence = {organ.name: OrganPresence(NOT_FOUND if organ.name == "left_kidney" else FOUND, 0.95, 100.0, False, None)
                for organ in ORGANS}
    return labels, score, boxes, presence


def _fine_known(**settings) -> FineStage:
    defaults = dict(spacing_mm=SPACING, crop_margin_mm=3.0, organs=("liver", "left_kidney", "spleen"), coarse_channel=False)
    return _fine(VNet(VNetConfig(width=4, depth=2, convs_per_stage=(1, 1, 1))), **{**defaults, **settings})


def _coarse(image: Image) -> tuple[torch.Tensor, object]:
    grid = model_grid(image, (3.0, 3.0, 3.0))
    return torch.full((NUM_CLASSES, *grid.shape), 0.2), grid


def test_each_organ_found_is_replaced_by_the_fine_result_inside_its_crop_clipped_at_the_scan_edge():
    image, calls = _ct(), []
    labels, score, boxes, presence = _first_stage()
    refined = refine(image, labels, score, boxes, presence, _coarse(image), _fine_known(), HU_WINDOW, _known_infer(calls))

    assert refined == ["liver", "spleen"]
    # one fine pass per organ refined and found (not the left kidney, not found; not the right kidney, not refined);
    # crops: the box widened by 3 mm (2 voxels of 1.5 mm and of 2 mm), the spleen's clipped at the face x = 39
    liver_crop = (slice(7, 29), slice(3, 21), slice(2, 18))
    spleen_crop = (slice(29, 40), slice(9, 28), slice(7, 28))
    assert [tuple(call.shape) for call in calls] == [(1, 22, 18, 16), (1, 11, 19, 21)]
    assert [crop_box(boxes[ORGAN[name]], 3.0, np.array(SPACING), SHAPE) for name in ("liver", "spleen")] == [liver_crop, spleen_crop]

    expected = np.zeros(SHAPE, dtype=np.uint8)
    expected[20:28, 18:24, 5:10] = ORGAN["right_kidney"]
    expected[TRUE_LIVER] = ORGAN["liver"]
    expected[20:24, 18, 5:10] = ORGAN["right_kidney"]  # its margin 0.5 beats the fine liver's 0.4; 0.3 at y 19 does not
    expected[TRUE_SPLEEN] = ORGAN["spleen"]
    np.testing.assert_array_equal(labels, expected)
    assert np.all(score[TRUE_SPLEEN] == np.float16(1.0))


def test_a_fine_stage_that_draws_nothing_leaves_the_first_stage_labels():
    image = _ct()
    labels, score, boxes, presence = _first_stage()
    before = labels.copy(), score.copy()

    def background(volume: torch.Tensor) -> torch.Tensor:
        probabilities = torch.zeros((NUM_CLASSES, *volume.shape[1:]))
        probabilities[0] = 1.0
        return probabilities

    assert refine(image, labels, score, boxes, presence, _coarse(image), _fine_known(), HU_WINDOW, background) == []
    np.testing.assert_array_equal(labels, before[0])
    np.testing.assert_array_equal(score, before[1])


def test_no_organ_found_means_no_fine_pass():
    image, calls = _ct(), []
    labels, score, boxes, presence = _first_stage()
    presence = {name: OrganPresence(NOT_FOUND, None, 0.0, False, "nothing drawn") for name in presence}
    assert refine(image, labels, score, {}, presence, _coarse(image), _fine_known(), HU_WINDOW, _known_infer(calls)) == []
    assert calls == []


def test_the_coarse_channel_is_the_first_stage_probability_on_the_fine_grid_scaled_to_minus_one_one():
    """A first-stage liver probability linear in x on the 3 mm grid is linear on the fine grid of the crop."""
    image, calls = _ct(), []
    labels, score, boxes, presence = _first_stage()
    probabilities, grid = _coarse(image)
    ramp = torch.arange(grid.shape[0], dtype=torch.float32) / 40
    probabilities[ORGAN["liver"]] = ramp[:, None, None].expand(grid.shape)
    refine(image, labels, score, boxes, presence, (probabilities, grid), _fine_known(coarse_channel=True), HU_WINDOW, _known_infer(calls))

    channel = calls[0][1]  # the liver's crop starts at x = 7 (1.5 mm voxels)
    model_x = grid.model_coordinates(0, np.arange(7, 29))
    expected = torch.from_numpy(2 * model_x / 40 - 1).float()[:, None, None].expand(channel.shape)
    torch.testing.assert_close(channel, expected, rtol=0, atol=1e-6)
    assert torch.equal(calls[1][1], torch.full_like(calls[1][1], -0.6))  # the spleen's constant 0.2


def test_a_piece_labelled_another_organ_at_the_scans_face_is_the_organ_where_the_first_stage_says_so():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0:3, 4:6, 7:10] = ORGAN["left_kidney"]  # touches the last axial slice
    labels[5:7, 5:7, 2:4] = ORGAN["left_kidney"]  # inside the crop
    labels[3:5, 0:2, 5:10] = ORGAN["spleen"]  # the organ itself
    named = np.zeros(labels.shape, dtype=bool)
    named[:2] = True  # the first stage says spleen at x 0-1 only
    named[5:7] = True
    before = labels.copy()

    renamed = name_cut_pieces(labels, named, ORGAN["spleen"], [(2, 1)])
    expected = labels.copy()
    expected[0:2, 4:6, 7:10] = ORGAN["spleen"]  # x 2 stays the left kidney: the first stage does not say spleen there
    np.testing.assert_array_equal(renamed, expected)
    np.testing.assert_array_equal(labels, before)  # a new array
    np.testing.assert_array_equal(name_cut_pieces(labels, named, ORGAN["spleen"], [(2, 0), (0, 1)]), labels)  # other faces
    np.testing.assert_array_equal(name_cut_pieces(labels, named, ORGAN["spleen"], []), labels)  # the whole organ in the scan


def test_a_sliver_at_the_scans_edge_that_the_crop_calls_another_organ_is_refined_as_the_first_stage_named_it():
    """The spleen's crop ends at the scan's face x = 39; a fine network that calls the true spleen left kidney draws
    it as spleen where the first stage's spleen probability is above 0.5, and draws no spleen where it is not."""
    image = _ct()

    def spleen_as_left_kidney(volume: torch.Tensor) -> torch.Tensor:
        probabilities = _known_infer([])(volume)
        probabilities[ORGAN["left_kidney"]], probabilities[ORGAN["spleen"]] = probabilities[ORGAN["spleen"]], 0.0
        return probabilities

    for first_stage_spleen, drawn in ((0.9, TRUE_SPLEEN), (0.2, (slice(32, 40), slice(12, 25), slice(10, 25)))):
        labels, score, boxes, presence = _first_stage()
        probabilities, grid = _coarse(image)
        probabilities[ORGAN["spleen"]] = first_stage_spleen
        refine(image, labels, score, boxes, presence, (probabilities, grid), _fine_known(), HU_WINDOW, spleen_as_left_kidney)
        expected = np.zeros(SHAPE, dtype=bool)
        expected[drawn] = True  # else the fine stage drew no spleen: the first stage's block stays
        np.testing.assert_array_equal(labels == ORGAN["spleen"], expected)


def test_windows_in_batches_blend_as_windows_one_at_a_time():
    """The fine stage runs all windows of a crop as one batch on a GPU; the CPU check: the same probabilities."""
    network = _random_network(FINE_CONFIG, 4)
    volume = torch.randn(2, 40, 36, 22)
    one, batched = (infer_probabilities(network, volume, (16, 16, 16), 0.25, torch.device("cpu"), batch_size=n) for n in (1, 5))
    assert count_windows((40, 36, 22), (16, 16, 16), 0.25) == 18  # 3 batches of 5 and one of 3
    torch.testing.assert_close(batched, one, rtol=0, atol=1e-5)


# --- through segment() -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ts_dicom_single_stage(ts_dicom_ct, default_model_bundle):
    """The default model's first stage alone on ts_dicom (LPS, 0.98 x 0.98 x 2 mm): liver and spleen found, the kidneys not."""
    prediction = segment(ts_dicom_ct, dataclasses.replace(default_model_bundle, fine=None), device="cpu")
    assert [name for name, decision in prediction.presence.items() if decision.found] == ["liver", "spleen"]
    return prediction


def _two_stage(tmp_path, default_model_bundle, fine: FineStage):
    path = tmp_path / "two-stage.safetensors"
    save_bundle(path, default_model_bundle.network, default_model_bundle.preprocessing, default_model_bundle.patch_size, "default-two-stage",
                "2026-12-01", overlap=default_model_bundle.overlap, training=default_model_bundle.metadata["training"], fine=fine)
    return load_bundle(path)


def _recording_crops(monkeypatch) -> list[Image]:
    crops = []
    preprocess = fine_stage.preprocess

    def record(image, spec):
        crops.append(image)
        return preprocess(image, spec)

    monkeypatch.setattr(fine_stage, "preprocess", record)
    return crops


def test_a_fine_stage_that_draws_nothing_gives_exactly_the_single_stage_labels(tmp_path, monkeypatch, ts_dicom_ct, default_model_bundle,
                                                                               ts_dicom_single_stage):
    network = VNet(VNetConfig(width=4, depth=2, convs_per_stage=(1, 1, 1)))
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.copy_(torch.tensor([10.0, 0, 0, 0, 0]))  # background everywhere
    bundle = _two_stage(tmp_path, default_model_bundle, _fine(network, spacing_mm=(3.0, 3.0, 3.0)))
    crops = _recording_crops(monkeypatch)
    prediction = segment(ts_dicom_ct, bundle, device="cpu")
    assert len(crops) == 2  # the liver and the spleen: the kidneys were not found
    np.testing.assert_array_equal(prediction.labels.array, ts_dicom_single_stage.labels.array)
    assert prediction.presence == ts_dicom_single_stage.presence
    assert {"preprocess", "inference", "postprocess", "fine"} <= set(prediction.timings_s)


def test_a_random_fine_stage_changes_labels_only_inside_its_crops_on_the_input_grid(tmp_path, monkeypatch, ts_dicom_ct, default_model_bundle,
                                                                                   ts_dicom_single_stage):
    bundle = _two_stage(tmp_path, default_model_bundle, _fine(_random_network(FINE_CONFIG, 3), organs=("liver", "right_kidney")))
    crops = _recording_crops(monkeypatch)
    fine_windows = []

    def record_fine_windows(network, volume, roi, *rest, **options):
        if network is bundle.fine.network:
            fine_windows.append((tuple(volume.shape[-3:]), roi))
        return infer_probabilities(network, volume, roi, *rest, **options)

    monkeypatch.setattr(predict, "infer_probabilities", record_fine_windows)
    prediction = segment(ts_dicom_ct, bundle, device="cpu")

    labels, single = prediction.labels.array, ts_dicom_single_stage.labels.array
    assert prediction.labels.same_grid(ts_dicom_ct) and labels.dtype == np.uint8
    assert len(crops) == 1  # the liver: the spleen is not refined, the right kidney not found
    array, affine, _ = canonical(ts_dicom_ct)
    start = np.rint(np.linalg.solve(affine, crops[0].affine[:, 3])[:3]).astype(int)
    inside = np.zeros(array.shape, dtype=bool)
    inside[tuple(slice(a, a + n) for a, n in zip(start, crops[0].shape))] = True
    assert crops[0].shape[2] == array.shape[2]  # 20 slices of 2 mm: the crop is clipped to the scan's first and last
    # its 20 slices make 20 fine voxels of 2 mm: the fine windows stay the fine patch (32 along z), as in training
    ((fine_shape, fine_roi),) = fine_windows
    assert fine_shape[2] == 20 and fine_roi == bundle.fine.patch_size == (64, 64, 32)
    inside = model_grid(ts_dicom_ct, (3.0, 3.0, 3.0)).to_input_orientation(inside)
    np.testing.assert_array_equal(labels[~inside], single[~inside])
    assert np.any(labels[inside] != single[inside])  # random weights: the liver's crop is redrawn
    assert not np.isin(labels, [ORGAN["right_kidney"], ORGAN["left_kidney"]]).any()
    assert np.count_nonzero(labels == ORGAN["spleen"]) > 0
