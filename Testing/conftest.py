"""Shared fixtures of the engine tests.

Real CT lives outside the repository, in ``<repo>/../shared/data`` (see its README.md); the
tests that need it fail, never skip, when it is missing, so that a CI machine without the
data cannot pass silently.
"""

from __future__ import annotations

import os
from pathlib import Path

# OpenMP threads that spin while they wait make a 2-thread torch 5-10x slower as soon as
# anything else wants the CPU (measured: segment() of ts_example 4 s alone, 50 s beside one
# busy process; 7 s with passive waiting). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from AbdoSegLib.model.bundle import ModelBundle, load_bundle, save_bundle  # noqa: E402
from AbdoSegLib.image import Image  # noqa: E402
from AbdoSegLib.io.image_files import read_image  # noqa: E402
from AbdoSegLib.model.preprocessing import Preprocessing  # noqa: E402
from AbdoSegLib.model.vnet import VNet, VNetConfig  # noqa: E402

# Small and predictable on a 2-core CI machine.
torch.set_num_threads(2)

# The project's real test data sits beside the checkout; ABDOSEG_DATA points elsewhere (a clone in another folder).
SHARED_DATA = Path(os.environ.get("ABDOSEG_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")

TINY_CONFIG = VNetConfig(width=4, depth=2, convs_per_stage=(1, 1, 1))
TINY_PREPROCESSING = Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0))
TINY_PATCH = (32, 32, 32)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``<repo>/../shared/data`` or ``$ABDOSEG_DATA``; a missing folder is a test failure, not a skip."""
    assert SHARED_DATA.is_dir(), (f"the test data folder {SHARED_DATA} is missing: the tests read the project's real CT from "
                                  "../shared/data beside the checkout, or from the folder ABDOSEG_DATA names")
    return SHARED_DATA


def _read_only(image: Image) -> Image:
    """Session-wide images are shared between tests: make accidental edits raise."""
    image.array.setflags(write=False)
    return image


@pytest.fixture(scope="session")
def ts_example_ct(data_dir: Path) -> Image:
    """ts_example CT: 122x101x112 voxels of 3 mm, RAS, int32 HU (read-only array)."""
    return _read_only(read_image(data_dir / "ts_example" / "ct.nii.gz"))


@pytest.fixture(scope="session")
def ts_dicom_ct(data_dir: Path) -> Image:
    """ts_dicom series: 512x512x20 voxels of 0.977x0.977x2 mm, LPS voxel order (read-only array)."""
    return _read_only(read_image(data_dir / "ts_dicom" / "dicom"))


@pytest.fixture(scope="session")
def tiny_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight V-Net bundle (width 4, depth 2): exercises the mechanics, segments nothing real."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(20240601)
        network = VNet(TINY_CONFIG)
    path = tmp_path_factory.mktemp("bundle") / "tiny-vnet.safetensors"
    save_bundle(
        path,
        network,
        TINY_PREPROCESSING,
        TINY_PATCH,
        name="tiny-test-vnet",
        created="2024-06-01T00:00:00Z",
        training={"note": "random weights; a test fixture, not a model"},
        validation={},
    )
    return path


@pytest.fixture(scope="session")
def tiny_model_bundle(tiny_bundle_path: Path) -> ModelBundle:
    """The fixture bundle, loaded (network in eval mode on the CPU)."""
    return load_bundle(tiny_bundle_path)


def voxel_world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World (RAS mm) position of every voxel centre: array of shape (*shape, 3)."""
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def box_corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World positions of the 8 outer corners of a grid's field of view (voxel edges, not centres), sorted."""
    corners = np.array([[a, b, c] for a in (-0.5, shape[0] - 0.5) for b in (-0.5, shape[1] - 0.5) for c in (-0.5, shape[2] - 0.5)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world[np.lexsort(np.round(world, 3).T[::-1])]
