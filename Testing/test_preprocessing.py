"""Preprocessing: canonical orientation, the model grid, resampling, labels, HU normalisation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from AbdoSegLib.image import Image
from AbdoSegLib.model import preprocessing
from AbdoSegLib.model.preprocessing import (
    Preprocessing,
    canonical,
    hounsfield,
    labels_to_model_grid,
    model_grid,
    normalise,
    preprocess,
    resample,
)
from conftest import box_corners, voxel_world

SPACINGS = (0.7, 1.1, 2.3)
ORIGIN = (5.0, -7.0, 11.0)


def _oriented_affine(permutation, flips, spacing=SPACINGS, origin=ORIGIN) -> np.ndarray:
    """Voxel axis i runs along world axis permutation[i], in direction flips[i]."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for i, (axis, flip) in enumerate(zip(permutation, flips)):
        affine[axis, i] = flip * spacing[i]
    affine[:3, 3] = origin
    return affine


ORIENTATIONS = [(p, f) for p in itertools.permutations(range(3)) for f in itertools.product((1, -1), repeat=3)]


@pytest.mark.parametrize("permutation, flips", ORIENTATIONS, ids=[f"{p}{f}" for p, f in ORIENTATIONS])
def test_canonical_then_back_is_the_identity(permutation, flips):
    array = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    image = Image(array, _oriented_affine(permutation, flips))
    canonical_array, canonical_affine, _ = canonical(image)

    # canonical: voxel axes along +R, +A, +S
    assert np.count_nonzero(canonical_affine[:3, :3]) == 3 and (np.diag(canonical_affine)[:3] > 0).all()
    # every voxel keeps its world position: look each input voxel up in the canonical array
    world = voxel_world(image.affine, image.shape).reshape(-1, 3)
    index = np.linalg.solve(canonical_affine[:3, :3], (world - canonical_affine[:3, 3]).T).T
    np.testing.assert_allclose(index, np.round(index), atol=1e-9)
    index = np.round(index).astype(int)
    np.testing.assert_array_equal(canonical_array[tuple(index.T)], array.ravel())

    # and back to the input's voxel order
    grid = model_grid(image, (1.0, 1.0, 1.0))
    assert grid.canonical_shape == canonical_array.shape
    back = grid.to_input_orientation(canonical_array)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def _oblique(spacing, origin) -> np.ndarray:
    c, s = math.cos(math.radians(12)), math.sin(math.radians(12))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


GRIDS = {
    "ras_divisible": ((90, 60, 30), _oriented_affine((0, 1, 2), (1, 1, 1), (1.0, 1.0, 1.0))),
    "lps_anisotropic": ((91, 50, 37), _oriented_affine((0, 1, 2), (-1, -1, 1), (1.0, 0.8, 2.5))),
    "permuted": ((37, 91, 50), _oriented_affine((2, 0, 1), (1, -1, 1), (2.5, 1.0, 0.8))),
    "oblique": ((64, 70, 20), _oblique((0.75, 0.75, 4.0), (-30.0, 12.0, 100.0))),
}


@pytest.mark.parametrize("name", GRIDS)
def test_model_grid_covers_the_same_field_of_view(name):
    shape, affine = GRIDS[name]
    image = Image(np.zeros(shape, np.int16), affine)
    grid = model_grid(image, (3.0, 3.0, 3.0))
    canonical_affine = canonical(image)[1]
    canonical_spacing = np.linalg.norm(canonical_affine[:3, :3], axis=0)
    assert grid.shape == tuple(max(1, round(n * s / 3.0)) for n, s in zip(grid.canonical_shape, canonical_spacing))

    def centre(a, s):
        return a[:3, :3] @ ((np.array(s) - 1) / 2) + a[:3, 3]

    np.testing.assert_allclose(centre(grid.affine, grid.shape), centre(affine, shape), atol=1e-9)
    np.testing.assert_allclose(box_corners(grid.affine, grid.shape), box_corners(affine, shape), atol=1e-9)
    # model voxels: the input's spacing times the resize factor, along the canonical axes
    np.testing.assert_allclose(np.linalg.norm(grid.affine[:3, :3], axis=0), canonical_spacing * np.array(grid.canonical_shape) / grid.shape)


def test_model_grid_voxel_centres_exact_for_a_divisible_grid():
    """90 x 1 mm -> 30 x 3 mm: model voxel o covers input voxels 3o..3o+2, centred on 3o+1."""
    affine = _oriented_affine((0, 1, 2), (1, 1, 1), (1.0, 1.0, 1.0), (-44.5, 10.0, 3.0))
    grid = model_grid(Image(np.zeros((90, 90, 90), np.uint8), affine), (3.0, 3.0, 3.0))
    assert grid.shape == (30, 30, 30)
    expected = np.eye(4)
    expected[:3, :3] = np.diag([3.0, 3.0, 3.0])
    expected[:3, 3] = np.array([-44.5, 10.0, 3.0]) + 1.0
    np.testing.assert_allclose(grid.affine, expected, atol=1e-12)


@pytest.mark.parametrize("name", ["ras_divisible", "lps_anisotropic", "permuted", "oblique"])
def test_resampled_world_coordinates_match_the_model_grid_affine(name):
    """Resample an image whose voxel values ARE their world coordinates: the model grid's
    affine must predict the resampled values (interior, where the filters see no border)."""
    shape, affine = GRIDS[name]
    world = voxel_world(affine, shape)
    spec = (3.0, 3.0, 3.0)
    grid = model_grid(Image(np.zeros(shape, np.int16), affine), spec)
    model_world = voxel_world(grid.affine, grid.shape)
    canonical_spacing = np.linalg.norm(canonical(Image(np.zeros(shape), affine))[1][:3, :3], axis=0)
    factors = np.array(grid.canonical_shape) / np.array(grid.shape)
    margin = tuple(math.ceil(f) + 1 for f in factors)
    interior = tuple(slice(m, n - m) for m, n in zip(margin, grid.shape))
    # non-integer antialiased downsampling shifts by up to 0.09 input voxel (PyTorch's
    # sampled triangle filter); integer factors and upsampling are exact
    tolerance = 1e-3 + 0.09 * canonical_spacing.max() * any(abs(f - round(f)) > 1e-9 and f > 1 for f in factors)
    for axis in range(3):
        values = Image(world[..., axis].astype(np.float32), affine)
        resampled = resample(canonical(values)[0], grid.shape).numpy()
        assert resampled.shape == grid.shape
        np.testing.assert_allclose(resampled[interior], model_world[interior + (axis,)], atol=tolerance)


@pytest.mark.parametrize("target", [(10, 12, 9), (40, 33, 61), (20, 24, 30)])
def test_resample_keeps_a_constant_constant(target):
    array = np.full((20, 24, 30), -321.0, dtype=np.float32)
    np.testing.assert_allclose(resample(array, target).numpy(), -321.0, rtol=1e-6)


def test_resample_with_the_same_shape_is_the_identity():
    array = np.random.default_rng(1).integers(-1024, 3000, size=(13, 17, 40)).astype(np.int16)
    out = resample(array, array.shape)
    assert out.dtype == torch.float32 and tuple(out.shape) == array.shape
    np.testing.assert_array_equal(out.numpy(), array.astype(np.float32))


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("n, m", [(30, 10), (90, 30), (40, 57), (12, 31), (50, 23), (100, 33)])
def test_resample_keeps_a_linear_ramp_linear(axis, n, m):
    """Input index i resized n -> m lands at output o with i = (o + 0.5) n / m - 0.5."""
    shape, target = [6, 7, 8], [6, 7, 8]
    shape[axis], target[axis] = n, m
    ramp = np.arange(n, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)]) * np.ones(shape, np.float32)
    out = np.moveaxis(resample(ramp, tuple(target)).numpy(), axis, 0).reshape(m, -1)
    np.testing.assert_allclose(out, np.repeat(out[:, :1], out.shape[1], axis=1), atol=1e-5)  # constant across the other axes
    expected = (np.arange(m) + 0.5) * n / m - 0.5
    factor = n / m
    margin = math.ceil(factor) + 1
    # exact for integer factors and for upsampling; PyTorch's antialias filter (a sampled
    # triangle) is off by at most 0.09 input voxel at non-integer downsampling factors
    tolerance = 0.09 if factor > 1 and factor != int(factor) else 1e-4
    np.testing.assert_allclose(out[margin:-margin, 0], expected[margin:-margin], atol=tolerance)


@pytest.mark.parametrize("target", [(20, 15, 33), (50, 40, 150)])
@pytest.mark.parametrize("small_slab", [7, 32])
def test_slab_chunking_equals_one_piece(monkeypatch, target, small_slab):
    array = np.random.default_rng(2).normal(0, 500, size=(40, 30, 100)).astype(np.float32)
    window = (-200.0, 400.0)
    monkeypatch.setattr(preprocessing, "SLAB_SLICES", small_slab)
    chunked = resample(array, target, clip=window).numpy()
    monkeypatch.setattr(preprocessing, "SLAB_SLICES", 10**6)
    whole = resample(array, target, clip=window).numpy()
    assert chunked.shape == whole.shape == target
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-3)
    assert whole.min() >= window[0] - 1e-3 and whole.max() <= window[1] + 1e-3


def test_preprocess_leaves_the_callers_volume_unchanged():
    """Clipping to the HU window must work on a copy. A float32 C-ordered volume of at most
    SLAB_SLICES slices (a Slicer array, a small crop) reaches the clamp without a copy."""
    array = np.linspace(-1000, 1500, 40 * 40 * 20, dtype=np.float32).reshape(40, 40, 20)
    before = array.copy()
    image = Image(array, np.diag([3.0, 3.0, 3.0, 1.0]))
    tensor, _ = preprocess(image, Preprocessing((4.0, 4.0, 4.0), (-200.0, 400.0)))
    assert float(tensor.min()) == -1.0 and float(tensor.max()) == 1.0
    np.testing.assert_array_equal(image.array, before)


def test_resample_leaves_its_input_unchanged():
    array = np.linspace(-1000, 1500, 10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14)
    before = array.copy()
    resample(array, (5, 6, 7), clip=(-200.0, 400.0))
    np.testing.assert_array_equal(array, before)


@pytest.mark.parametrize("permutation, flips", [((0, 1, 2), (1, 1, 1)), ((2, 0, 1), (-1, 1, -1)), ((1, 2, 0), (1, -1, -1))])
def test_labels_to_model_grid_and_nearest_back_is_the_identity(permutation, flips):
    """3 mm blocks of 1 mm voxels: the model grid holds one voxel per block, and nearest
    neighbour back onto the input grid rebuilds the input labelmap exactly."""
    rng = np.random.default_rng(4)
    blocks = rng.integers(0, 5, size=(10, 8, 6)).astype(np.uint8)  # canonical (R, A, S) order
    canonical_labels = blocks.repeat(3, 0).repeat(3, 1).repeat(3, 2)
    # store it in another voxel order: input axis i runs along world axis permutation[i]
    stored = np.transpose(canonical_labels, permutation)
    for i, flip in enumerate(flips):
        if flip < 0:
            stored = np.flip(stored, axis=i)
    affine = _oriented_affine(permutation, flips, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    # place the flipped axes so that canonical index 0 stays at world 0
    for i, flip in enumerate(flips):
        if flip < 0:
            affine[permutation[i], 3] = stored.shape[i] - 1
    labels = Image(np.ascontiguousarray(stored), affine)

    grid = model_grid(labels, (3.0, 3.0, 3.0))
    assert grid.shape == blocks.shape
    on_model = labels_to_model_grid(labels, grid)
    assert on_model.dtype == np.uint8
    np.testing.assert_array_equal(on_model, blocks)

    nearest = [
        np.clip(np.round(grid.model_coordinates(axis, np.arange(grid.canonical_shape[axis]))), 0, grid.shape[axis] - 1).astype(int)
        for axis in range(3)
    ]
    back = grid.to_input_orientation(on_model[np.ix_(*nearest)])
    np.testing.assert_array_equal(back, labels.array)


def test_normalise_maps_the_window_to_minus_one_one_and_hounsfield_undoes_it():
    hu = torch.tensor([-3000.0, -200.0, 100.0, 400.0, 3000.0, -50.0])
    out = normalise(hu.clone(), (-200.0, 400.0))
    np.testing.assert_allclose(out.numpy(), [-1.0, -1.0, 0.0, 1.0, 1.0, -0.5], atol=1e-7)
    back = hounsfield(out, (-200.0, 400.0))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, [-200.0, -200.0, 100.0, 400.0, 400.0, -50.0], atol=1e-4)


def _flip_axis0(image: Image) -> Image:
    """The same CT with its first voxel axis stored the other way round (same world positions)."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, image.shape[0] - 1
    return Image(np.ascontiguousarray(image.array[::-1]), image.affine @ flip)


def _transpose(image: Image, axes=(2, 0, 1)) -> Image:
    """The same CT with its voxel axes stored in another order."""
    permute = np.eye(4)
    permute[:3, :3] = np.eye(3)[:, list(axes)]
    return Image(np.ascontiguousarray(image.array.transpose(axes)), image.affine @ permute)


@pytest.mark.parametrize("storage", ["flip_axis0", "transpose", "transpose_and_flip"])
def test_preprocessing_does_not_depend_on_the_voxel_storage_order(ts_example_ct, storage):
    other = {
        "flip_axis0": _flip_axis0,
        "transpose": _transpose,
        "transpose_and_flip": lambda image: _flip_axis0(_transpose(image)),
    }[storage](ts_example_ct)
    # the construction really is the same scan: same world position, same HU
    centre = np.array([40, 30, 50])
    world = ts_example_ct.affine @ np.append(centre, 1)
    other_index = np.round(np.linalg.solve(other.affine, world)[:3]).astype(int)
    assert other.array[tuple(other_index)] == ts_example_ct.array[tuple(centre)]
    assert not np.array_equal(other.affine, ts_example_ct.affine)

    spec = Preprocessing((4.5, 4.0, 5.0), (-200.0, 400.0))  # a real resampling, not the identity
    tensor, grid = preprocess(ts_example_ct, spec)
    other_tensor, other_grid = preprocess(other, spec)
    assert grid.shape == other_grid.shape
    np.testing.assert_allclose(other_grid.affine, grid.affine, atol=1e-9)
    torch.testing.assert_close(other_tensor, tensor, rtol=0, atol=1e-6)
    assert float(tensor.min()) >= -1.0 and float(tensor.max()) <= 1.0
