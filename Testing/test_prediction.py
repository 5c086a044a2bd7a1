"""Prediction: sliding-window inference, segment() on real CT, clean-up, and the way back to the input grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from AbdoSegLib.image import Image
from AbdoSegLib.inference import predict
from AbdoSegLib.inference.cleanup import FAT_MAX_HU, clean_labels, largest_component, winning_class
from AbdoSegLib.inference.predict import count_windows, infer_probabilities, segment, window_size
from AbdoSegLib.inference.sliding_window import MIN_WEIGHT, gaussian_weights, window_starts
from AbdoSegLib.inference.upsampling import labels_on_input_grid
from AbdoSegLib.model.preprocessing import PAD_VALUE, canonical, hounsfield, model_grid, preprocess
from AbdoSegLib.organs import NUM_CLASSES, ORGAN_NAMES, ORGANS
from conftest import crop, voxel_world

CPU = torch.device("cpu")


def _volume(shape, seed=0) -> torch.Tensor:
    """A normalised CT-like volume: smooth structures in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, 1, *shape), generator=generator)
    smooth = F.avg_pool3d(noise, 5, stride=1, padding=2, count_include_pad=False)[0, 0]
    return (smooth * 3).clamp(-1, 1)


def _single_pass(network: nn.Module, volume: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(network(volume[None, None])[0], dim=0)


def _conv_net(kernel: int, seed: int) -> nn.Module:
    """Three convolutions with tanh between, no normalisation: each output voxel depends only on
    the input within (kernel // 2) * 3 voxels of it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        p = kernel // 2
        return nn.Sequential(
            nn.Conv3d(1, 8, kernel, padding=p), nn.Tanh(),
            nn.Conv3d(8, 8, kernel, padding=p), nn.Tanh(),
            nn.Conv3d(8, NUM_CLASSES, kernel, padding=p),
        ).eval()


# --- sliding window -------------------------------------------------------------------


def test_window_covering_the_volume_equals_a_single_pass(tiny_model_bundle):
    """With instance normalisation a window's output depends on the whole window, so only a
    window that holds the whole volume can equal a single pass; then it must, to float rounding
    (the Gaussian weight divides out)."""
    network = tiny_model_bundle.network
    volume = _volume((24, 28, 20))
    probabilities = infer_probabilities(network, volume, (24, 28, 20), 0.25, CPU)
    torch.testing.assert_close(probabilities, _single_pass(network, volume), rtol=0, atol=2e-6)


def test_window_larger_than_the_volume_is_one_pass_over_the_padded_volume(tiny_model_bundle):
    """A volume smaller than the window is padded with PAD_VALUE (the bottom of the HU window,
    as training pads), half before and half after; one window runs and the padding is cropped off."""
    network = tiny_model_bundle.network
    shape, roi = (21, 26, 19), (32, 32, 32)
    volume = _volume(shape, seed=1)
    before = [(r - n) // 2 for n, r in zip(shape, roi)]
    after = [r - n - b for n, r, b in zip(shape, roi, before)]
    padded = F.pad(volume, [before[2], after[2], before[1], after[1], before[0], after[0]], value=PAD_VALUE)
    expected = _single_pass(network, padded)[:, before[0] : before[0] + shape[0], before[1] : before[1] + shape[1], before[2] : before[2] + shape[2]]
    probabilities = infer_probabilities(network, volume, roi, 0.25, CPU)
    assert probabilities.shape == (NUM_CLASSES, *shape)
    torch.testing.assert_close(probabilities, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_blended_windows_of_a_pointwise_network_equal_a_single_pass(overlap):
    """A network without normalisation and with 1x1x1 kernels gives every window exactly the
    single-pass values, so the blend must reproduce the single pass everywhere: this checks that
    each window's output goes back where its input came from and that the weights are normalised."""
    network = _conv_net(kernel=1, seed=3)
    volume = _volume((40, 36, 44), seed=2)
    calls = []
    probabilities = infer_probabilities(network, volume, (16, 16, 16), overlap, CPU, progress=lambda *a: calls.append(a))
    assert len(calls) == count_windows((40, 36, 44), (16, 16, 16), overlap) > 8
    torch.testing.assert_close(probabilities, _single_pass(network, volume), rtol=0, atol=1e-6)


def _window_starts(n: int, roi: int, overlap: float) -> list[int]:
    """MONAI's window placement along one axis: every int(roi * (1 - overlap)) voxels, the last
    window flush with the end of the volume."""
    if roi >= n:
        return [0]
    step = max(int(roi * (1 - overlap)), 1)
    starts = []
    for d in itertools.count():
        if d * step + roi >= n:
            return starts + [n - roi]
        starts.append(d * step)


def _clean_voxels(n: int, roi: int, overlap: float, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: voxels at least ``reach`` voxels inside every window that covers them
    (a window face on the volume border does not count: there the window and the single pass
    see the same zero padding), and the number of windows covering each voxel."""
    clean, cover = np.ones(n, bool), np.zeros(n, int)
    for start in _window_starts(n, roi, overlap):
        inside = np.arange(start, start + roi)
        cover[inside] += 1
        ok = np.ones(roi, bool)
        if start > 0:
            ok &= inside - start >= reach
        if start + roi < n:
            ok &= start + roi - 1 - inside >= reach
        clean[inside] &= ok
    return clean, cover


@pytest.mark.parametrize("roi, overlap", [((24, 24, 24), 0.25), ((16, 16, 16), 0.5)])
def test_blended_windows_of_a_convolution_stack_equal_a_single_pass_away_from_window_faces(roi, overlap):
    """3x3x3 kernels: a window's output differs from the single pass within 3 voxels of its
    faces (zero padding there instead of the neighbouring CT), and the Gaussian weights
    (clamped at 1e-3 of the centre) still mix those voxels in: measured up to 0.02 in
    probability on this volume, 0.1 on white noise. Everywhere else every window gives the
    single-pass value, so the blend must reproduce it to float rounding (measured 6e-8;
    with a mask one voxel too generous the error jumps to 4e-3, so the bound is sharp)."""
    shape, reach = (40, 36, 44), 3
    network = _conv_net(kernel=3, seed=4)
    volume = _volume(shape, seed=5)
    probabilities = infer_probabilities(network, volume, roi, overlap, CPU)
    single = _single_pass(network, volume)
    per_axis = [_clean_voxels(n, r, overlap, reach) for n, r in zip(shape, roi)]
    clean = np.ix_(*[np.flatnonzero(c) for c, _ in per_axis])
    covered_twice = [(c & (k >= 2)).any() for c, k in per_axis]
    assert all(covered_twice), "the comparison must include voxels where windows are blended"
    difference = (probabilities - single).abs().numpy()
    assert difference[(slice(None), *clean)].max() < 1e-6
    # the mask matters: near window faces the blend really differs from a single pass
    assert difference.max() > 1e-3


def test_probabilities_are_a_distribution(tiny_model_bundle):
    volume = _volume((40, 36, 44), seed=6)
    calls = []
    probabilities = infer_probabilities(tiny_model_bundle.network, volume, (16, 16, 16), 0.25, CPU, progress=lambda *a: calls.append(a))
    assert probabilities.shape == (NUM_CLASSES, 40, 36, 44) and probabilities.dtype == torch.float32
    assert float(probabilities.min()) >= 0.0 and float(probabilities.max()) <= 1.0
    torch.testing.assert_close(probabilities.sum(dim=0), torch.ones(40, 36, 44), rtol=0, atol=1e-5)
    # progress: one call per window, fractions rising to exactly 1
    fractions = [fraction for stage, fraction, _ in calls]
    assert len(calls) == count_windows((40, 36, 44), (16, 16, 16), 0.25)
    assert all(stage == "inference" for stage, _, _ in calls)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


# --- segment() on real CT -------------------------------------------------------------


@pytest.fixture(scope="module")
def ts_example_prediction(ts_example_ct, default_model_bundle) -> predict.Prediction:
    return segment(ts_example_ct, default_model_bundle, device="cpu")


def test_segment_labels_lie_on_the_input_grid(ts_example_ct, ts_example_prediction):
    labels = ts_example_prediction.labels
    assert labels.shape == ts_example_ct.shape == (122, 101, 112)
    np.testing.assert_array_equal(labels.affine, ts_example_ct.affine)
    assert labels.array.dtype == np.uint8
    assert set(np.unique(labels.array)) <= {0, 1, 2, 3, 4}
    assert ts_example_prediction.device == "cpu"
    assert {"preprocess", "inference", "postprocess"} <= set(ts_example_prediction.timings_s)


def test_segment_is_deterministic(ts_example_ct, default_model_bundle, ts_example_prediction):
    again = segment(ts_example_ct, default_model_bundle, device="cpu")
    assert set(np.unique(again.labels.array)) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(again.labels.array, ts_example_prediction.labels.array)
    assert again.presence == ts_example_prediction.presence


def test_confidence_is_the_mean_probability_of_each_organ_over_its_model_grid_voxels(ts_example_ct, default_model_bundle, ts_example_prediction):
    bundle = default_model_bundle
    volume, grid = preprocess(ts_example_ct, bundle.preprocessing)
    probabilities = infer_probabilities(bundle.network, volume, window_size(grid.shape, bundle.patch_size, bundle.network.config.divisor), bundle.overlap, CPU)
    cleaned = predict.cleaned_labels(probabilities, hounsfield(volume, bundle.preprocessing.hu_window))
    assert list(ts_example_prediction.confidence) == list(ORGAN_NAMES)  # all four found in the sample
    for organ in ORGANS:
        inside = torch.from_numpy(cleaned == organ.label)
        decision = ts_example_prediction.presence[organ.name]
        assert decision.found and decision.reason is None and decision.touches_edge == (organ.name in ("liver", "spleen"))
        assert decision.confidence == pytest.approx(float(probabilities[organ.label][inside].double().mean()), abs=1e-9)
        assert ts_example_prediction.confidence[organ.name] == decision.confidence
        assert 0.95 < decision.confidence < 1.0  # measured 0.973-0.984
        assert decision.volume_ml == pytest.approx(int(inside.sum()) * 27 / 1000)


def test_segment_dicom_labels_lie_on_the_input_grid(ts_dicom_ct, tiny_model_bundle):
    labels = segment(ts_dicom_ct, tiny_model_bundle, device="cpu").labels
    assert labels.shape == (512, 512, 20)
    np.testing.assert_array_equal(labels.affine, ts_dicom_ct.affine)
    assert labels.array.dtype == np.uint8


def _stored_otherwise(image: Image) -> Image:
    """The same voxels stored as (k, i, j) with the new first axis reversed."""
    array = np.ascontiguousarray(image.array.transpose(2, 0, 1)[::-1])
    permute = np.zeros((4, 4))
    permute[3, 3] = 1
    permute[2, 0], permute[0, 1], permute[1, 2] = -1, 1, 1  # new axis 0 = old k reversed
    permute[2, 3] = image.shape[2] - 1
    return Image(array, image.affine @ permute)


def test_segment_labels_follow_the_input_voxel_order(ts_example_ct, default_model_bundle):
    """The same CT stored in another voxel order gets the same labels, in that order (the default model:
    a random one finds no organ)."""
    part = crop(ts_example_ct, (slice(10, 110), slice(None), slice(20, 112)))  # all four organs in it
    other = _stored_otherwise(part)
    np.testing.assert_array_equal(other.array[5, 7, 9], part.array[7, 9, part.shape[2] - 1 - 5])
    labels = segment(part, default_model_bundle, device="cpu").labels.array
    other_labels = segment(other, default_model_bundle, device="cpu").labels.array
    assert labels.any()
    np.testing.assert_array_equal(other_labels, np.ascontiguousarray(labels.transpose(2, 0, 1)[::-1]))


def test_segment_of_lps_dicom_matches_segment_of_its_ras_copy(ts_dicom_ct, default_model_bundle):
    part = crop(ts_dicom_ct, (slice(128, 384), slice(128, 384), slice(None)))
    ras_array, ras_affine, _ = canonical(part)
    ras = Image(np.ascontiguousarray(ras_array), ras_affine)
    labels = segment(part, default_model_bundle, device="cpu").labels
    ras_labels = segment(ras, default_model_bundle, device="cpu").labels
    assert labels.array.any()
    np.testing.assert_array_equal(canonical(labels)[0], ras_labels.array)


# --- clean-up -------------------------------------------------------------------------


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.array(centre), axis=-1) <= radius


def _soft_tissue(labels: np.ndarray) -> np.ndarray:
    """HU of 40 everywhere: nothing is fat, so only the components and holes matter."""
    return np.full(labels.shape, 40.0, np.float32)


def test_clean_labels_keeps_the_largest_component_of_each_organ():
    shape = (40, 40, 40)
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, (12, 20, 20), 8)] = 1  # liver
    labels[_ball(shape, (33, 33, 33), 2)] = 1  # a stray liver island
    labels[30:37, 5:12, 5:12] = 4  # spleen
    labels[2:4, 2:4, 30:32] = 4  # a stray spleen island
    labels[30:33, 20:23, 2:5] = 2  # right kidney: one piece, kept
    cleaned = clean_labels(labels, _soft_tissue(labels))
    assert cleaned.dtype == np.uint8 and cleaned.shape == shape
    np.testing.assert_array_equal(cleaned == 1, _ball(shape, (12, 20, 20), 8))
    expected_spleen = np.zeros(shape, bool)
    expected_spleen[30:37, 5:12, 5:12] = True
    np.testing.assert_array_equal(cleaned == 4, expected_spleen)
    np.testing.assert_array_equal(cleaned == 2, labels == 2)
    assert not (cleaned == 3).any()
    assert (cleaned[labels == 0] == 0).all()  # nothing appears out of the background


def test_clean_labels_counts_diagonal_neighbours_as_connected():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:4, 2:4, 2:4] = 1
    labels[4, 4, 4] = 1  # touches the cube only at a corner
    labels[8, 8, 8] = 1  # really separate
    cleaned = clean_labels(labels, _soft_tissue(labels))
    assert cleaned[4, 4, 4] == 1 and cleaned[8, 8, 8] == 0 and (cleaned[2:4, 2:4, 2:4] == 1).all()


def test_clean_labels_fills_an_enclosed_hole_but_not_another_organ():
    shape = (30, 30, 30)
    labels = np.zeros(shape, np.uint8)
    liver = _ball(shape, (15, 15, 15), 10)
    hole = _ball(shape, (15, 15, 15), 3)
    labels[liver & ~hole] = 1
    labels[15, 15, 8] = 0  # a second, one-voxel hole
    labels[15, 15, 20] = 4  # a spleen voxel enclosed by the liver stays spleen
    cleaned = clean_labels(labels, _soft_tissue(labels))
    expected = liver.copy()
    expected[15, 15, 20] = False
    np.testing.assert_array_equal(cleaned == 1, expected)
    assert cleaned[15, 15, 20] == 4
    # a notch open to the outside is not a hole
    notched = labels.copy()
    notched[15, 15, 0:12] = 0
    assert (clean_labels(notched, _soft_tissue(notched))[15, 15, 0:5] == 0).all()


def test_clean_labels_drops_fat_and_gas_but_refills_an_enclosed_fat_pocket():
    shape = (40, 40, 40)
    kidney = _ball(shape, (20, 20, 20), 10)
    labels = np.where(kidney, 2, 0).astype(np.uint8)
    hu = np.full(shape, 30.0, np.float32)  # unenhanced kidney
    sinus = kidney & (np.indices(shape)[0] >= 24) & (np.abs(np.indices(shape)[1] - 20) <= 3)  # open to the side
    hu[sinus] = -100.0
    hu[20, 20, 10] = -800.0  # a gas voxel at the pole (on the surface)
    hu[14:17, 19:22, 19:22] = -90.0  # fat enclosed by parenchyma
    hu[20, 20, 11] = FAT_MAX_HU  # exactly at the bound: still organ
    labels[20, 20, 31:34] = 2  # a tail joined to the kidney ...
    hu[20, 20, 30] = -120.0  # ... only through fat
    cleaned = clean_labels(labels, hu)
    expected = kidney & ~sinus
    expected[20, 20, 10] = expected[20, 20, 30] = False
    np.testing.assert_array_equal(cleaned == 2, expected)
    assert not (cleaned[~kidney]).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_labels_in_each_organs_box_equals_the_clean_up_of_the_whole_grid(seed):
    """Blobby organs, some against the grid's edges, with stray pieces, fat and holes: the answer computed in each
    organ's bounding box is the one scipy gives on the whole grid."""
    rng = np.random.default_rng(seed)
    shape = (48, 40, 36)
    smooth = [F.avg_pool3d(torch.from_numpy(rng.standard_normal((1, 1, *shape)).astype(np.float32)), 7, stride=1, padding=3,
                           count_include_pad=False)[0, 0].numpy() for _ in range(5)]
    organ_weight = np.array([1.0, 1.6, 1.6, 1.6, 1.6])[:, None, None, None]  # organs win more often than background
    labels = np.argmax(np.stack(smooth) * organ_weight, axis=0).astype(np.uint8)
    hu = np.where(rng.random(shape) < 0.05, -100.0, 40.0).astype(np.float32)
    expected = np.zeros_like(labels)
    for organ in ORGANS:
        mask = (labels == organ.label) & (hu >= FAT_MAX_HU)
        whole = largest_component(mask) if mask.any() else mask
        expected[ndimage.binary_fill_holes(whole) & ((labels == 0) | (labels == organ.label))] = organ.label
    assert all((expected == organ.label).any() for organ in ORGANS)
    assert any((expected == organ.label)[index].any() for organ in ORGANS for index in ((0,), (-1,), (slice(None), 0)))
    np.testing.assert_array_equal(clean_labels(labels, hu), expected)


def test_a_pocket_open_only_to_the_grids_edge_is_not_a_hole():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[0:8, 5:15, 5:15] = 3
    labels[0:6, 8:12, 8:12] = 0  # a well in the kidney, open at the grid's first face
    cleaned = clean_labels(labels, _soft_tissue(labels))
    np.testing.assert_array_equal(cleaned, labels)


def test_winning_class_is_the_argmax_ties_to_the_lowest_class():
    probabilities = torch.softmax(torch.randn(5, 9, 8, 7, generator=torch.Generator().manual_seed(3)), dim=0)
    probabilities[:, 0] = 0.2  # a five-way tie: background
    probabilities[1:3, 1] = 0.4
    probabilities[(0, 3, 4), 1] = 0.2 / 3  # a tie of liver and right kidney: liver
    won = winning_class(probabilities)
    assert won.dtype == np.uint8 and won.shape == (9, 8, 7)
    np.testing.assert_array_equal(won, probabilities.argmax(dim=0).numpy())
    assert (won[0] == 0).all() and (won[1] == 1).all()


# --- back to the input grid -----------------------------------------------------------


def _sphere_probabilities(grid, centre, radius, organ, blobs=()) -> torch.Tensor:
    """Probabilities on the model grid: organ = sigmoid((radius - r) / 1 mm), background the rest."""
    world = voxel_world(grid.affine, grid.shape)
    p = 1.0 / (1.0 + np.exp(-(radius - np.linalg.norm(world - np.asarray(centre), axis=-1)) / 1.0))
    for blob_centre, blob_radius in blobs:
        p = np.maximum(p, 1.0 / (1.0 + np.exp(-(blob_radius - np.linalg.norm(world - np.asarray(blob_centre), axis=-1)) / 1.0)))
    probabilities = np.zeros((NUM_CLASSES, *grid.shape), np.float32)
    probabilities[organ] = p
    probabilities[0] = 1.0 - p
    return torch.from_numpy(probabilities)


def _to_input_grid(probabilities: torch.Tensor, grid) -> np.ndarray:
    labels = probabilities.argmax(dim=0).to(torch.uint8).numpy()
    cleaned = clean_labels(labels, _soft_tissue(labels))
    return labels_on_input_grid(probabilities, cleaned, grid)


FINE_GRIDS = {
    # 90 voxels of 1 mm -> 30 model voxels of 3 mm
    "ras": (np.array([[1.0, 0, 0, -44.5], [0, 1.0, 0, -44.5], [0, 0, 1.0, -44.5], [0, 0, 0, 1]]), (90, 90, 90)),
    # another voxel order (i -> P, j -> S, k -> L) and a size that 3 mm does not divide
    "permuted": (np.array([[0, 0, -1.0, 40.0], [-1.0, 0, 0, 44.5], [0, 1.0, 0, -35.0], [0, 0, 0, 1]]), (91, 70, 80)),
}


@pytest.mark.parametrize("organ", [1, 4])
@pytest.mark.parametrize("name", FINE_GRIDS)
def test_labels_on_input_grid_reproduce_a_smooth_sphere(name, organ):
    affine, shape = FINE_GRIDS[name]
    grid = model_grid(Image(np.zeros(shape, np.int16), affine), (3.0, 3.0, 3.0))
    centre, radius = np.array([3.2, -5.1, 7.7]), 25.0
    labels = _to_input_grid(_sphere_probabilities(grid, centre, radius, organ), grid)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, organ}
    r = np.linalg.norm(voxel_world(affine, shape) - centre, axis=-1)
    truth, got = r < radius, labels == organ
    dice = 2 * (truth & got).sum() / (truth.sum() + got.sum())
    assert dice > 0.99
    # the only mistakes lie within one fine voxel (1 mm) of the true surface
    wrong = truth != got
    assert np.abs(r[wrong] - radius).max(initial=0.0) < 1.0


def test_organ_keeps_its_size_when_the_winning_probability_is_below_one_half():
    """Five classes, an uncertain model: organ = 0.4 s + 0.05, background = 0.4 (1 - s) + 0.05,
    each other organ 1/6, with s the sharp sphere. The organ wins inside the sphere with at
    most 0.45, so the input grid must label the sphere (thresholding the organ's own
    probability at 0.5 would label nothing)."""
    affine, shape = FINE_GRIDS["ras"]
    grid = model_grid(Image(np.zeros(shape, np.int16), affine), (3.0, 3.0, 3.0))
    centre, radius = np.array([3.2, -5.1, 7.7]), 25.0
    s = _sphere_probabilities(grid, centre, radius, 1)[1]
    uncertain = torch.full((NUM_CLASSES, *grid.shape), 1.0 / 6)
    uncertain[1] = 0.4 * s + 0.05
    uncertain[0] = 0.4 * (1 - s) + 0.05
    assert float(uncertain.max()) <= 0.45 + 1e-6
    torch.testing.assert_close(uncertain.sum(0), torch.ones(grid.shape))
    labels = _to_input_grid(uncertain, grid)
    r = np.linalg.norm(voxel_world(affine, shape) - centre, axis=-1)
    truth, got = r < radius, labels == 1
    assert 2 * (truth & got).sum() / (truth.sum() + got.sum()) > 0.99
    assert np.abs(r[truth != got] - radius).max(initial=0.0) < 1.0


@pytest.mark.parametrize("side", ["low", "high"])
def test_sphere_touching_the_edge_is_labelled_up_to_the_edge(side):
    """The outermost input voxels lie outside the outermost model voxel centres (1 mm beyond
    them here): the organ must still reach them."""
    affine, shape = FINE_GRIDS["ras"]
    grid = model_grid(Image(np.zeros(shape, np.int16), affine), (3.0, 3.0, 3.0))
    centre, radius = np.array([-45.0 if side == "low" else 45.0, 2.0, -1.0]), 20.0  # centred on the face
    labels = _to_input_grid(_sphere_probabilities(grid, centre, radius, 1), grid)
    edge = 0 if side == "low" else shape[0] - 1
    r = np.linalg.norm(voxel_world(affine, shape) - centre, axis=-1)[edge]
    truth, got = r < radius, labels[edge] == 1
    assert truth.sum() > 1000
    wrong = truth != got
    assert np.abs(r[wrong] - radius).max(initial=0.0) < 1.0
    assert got[r < radius - 1.0].all()


def test_component_removed_by_clean_up_stays_removed_on_the_input_grid():
    """A confident stray blob that clean-up removed must not come back through the probabilities,
    even inside the bounding box of the organ that is kept."""
    affine, shape = FINE_GRIDS["ras"]
    grid = model_grid(Image(np.zeros(shape, np.int16), affine), (3.0, 3.0, 3.0))
    centre, blob = np.zeros(3), np.array([22.0, 22.0, 22.0])  # blob 9 mm beyond the organ's surface
    probabilities = _sphere_probabilities(grid, centre, 25.0, 1, blobs=[(blob, 4.0)])
    model_r_blob = np.linalg.norm(voxel_world(grid.affine, grid.shape) - blob, axis=-1)
    assert (probabilities.argmax(dim=0).numpy()[model_r_blob < 2.0] == 1).all()  # the blob is predicted
    labels = _to_input_grid(probabilities, grid)
    world = voxel_world(affine, shape)
    assert not (labels[np.linalg.norm(world - blob, axis=-1) < 7.0] == 1).any()
    assert (labels[np.linalg.norm(world - centre, axis=-1) < 24.0] == 1).all()


@pytest.mark.parametrize("size, roi, overlap", [(100, 32, 0.25), (33, 32, 0.5), (32, 32, 0.25), (20, 32, 0.25), (257, 160, 0.25)])
def test_windows_cover_the_axis_and_end_flush(size, roi, overlap):
    starts = window_starts(size, roi, overlap)
    covered = np.zeros(max(size, roi), bool)
    for start in starts:
        covered[start : start + roi] = True
    assert covered[:size].all()
    assert starts[0] == 0 and starts[-1] == max(size - roi, 0)
    steps = np.diff(starts)
    assert (steps <= max(int(roi * (1 - overlap)), 1)).all() and (steps > 0).all()


def test_gaussian_weights_peak_in_the_centre_and_cover_the_borders():
    weights = gaussian_weights((16, 20, 9))
    assert weights.shape == (16, 20, 9)
    assert float(weights.max()) == pytest.approx(1.0) and float(weights.min()) >= MIN_WEIGHT
    torch.testing.assert_close(weights, weights.flip(0).flip(1).flip(2))  # symmetric about the centre
    assert weights[7:9, 9:11, 4].min() > weights[0, 0, 0]
