"""Shared fixtures of the engine tests (``make test``).

Every fixture here reads data inside the repository: the sample CT and its labels that the module
ships (``AbdoSeg/Resources/SampleData``) and the small cases in ``Testing/Data`` (sources and
licences in its README.md). Tests on data that may not be redistributed are in ``Testing/validate``
(``make validate``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

# OpenMP threads that spin while they wait make a 2-thread torch 5-10x slower as soon as
# anything else wants the CPU (measured: segment() of ts_example 4 s alone, 50 s beside one
# busy process; 7 s with passive waiting). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from AbdoSegLib.image import Image  # noqa: E402
from AbdoSegLib.io.image_files import read_image  # noqa: E402
from AbdoSegLib.model.bundle import ModelBundle, load_bundle, save_bundle  # noqa: E402
from AbdoSegLib.model.preprocessing import Preprocessing  # noqa: E402
from AbdoSegLib.model.vnet import VNet, VNetConfig  # noqa: E402
from AbdoSegLib.resources import DEFAULT_BUNDLE, SAMPLE_CASE_ID, SAMPLE_CT, SAMPLE_REFERENCE  # noqa: E402

# Small and predictable on a 2-core CI machine.
torch.set_num_threads(2)

TEST_DATA = Path(__file__).resolve().parent / "Data"

TINY_CONFIG = VNetConfig(width=4, depth=2, convs_per_stage=(1, 1, 1))
TINY_PREPROCESSING = Preprocessing((3.0, 3.0, 3.0), (-200.0, 400.0))
TINY_PATCH = (32, 32, 32)


@pytest.fixture(scope="session")
def test_data() -> Path:
    """``Testing/Data``: ts_dicom, msd_spleen_8 (case folders) and anatomy_totalseg (anatomy maps)."""
    return TEST_DATA


@pytest.fixture(scope="session")
def ts_example_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample as a training case folder ``ts_example/`` (ct.nii.gz, label.nii.gz, case.json)."""
    folder = tmp_path_factory.mktemp("sample") / SAMPLE_CASE_ID
    folder.mkdir()
    shutil.copyfile(SAMPLE_CT, folder / "ct.nii.gz")
    shutil.copyfile(SAMPLE_REFERENCE, folder / "label.nii.gz")
    (folder / "case.json").write_text(json.dumps({
        "labelled": ["liver", "right_kidney", "left_kidney", "spleen"],
        "label_source": "TotalSegmentator 'total' task prediction (--fast), mapped to AbdoSeg ids",
        "source": "AbdoSeg/Resources/SampleData (see its README.md)",
    }))
    return folder


def _read_only(image: Image) -> Image:
    """Session-wide images are shared between tests: make accidental edits raise."""
    image.array.setflags(write=False)
    return image


@pytest.fixture(scope="session")
def ts_example_ct() -> Image:
    """The bundled sample CT (ts_example): 122x101x112 voxels of 3 mm, RAS, int32 HU (read-only array)."""
    return _read_only(read_image(SAMPLE_CT))


@pytest.fixture(scope="session")
def ts_dicom_ct(test_data: Path) -> Image:
    """ts_dicom series: 512x512x20 voxels of 0.977x0.977x2 mm, LPS voxel order (read-only array)."""
    return _read_only(read_image(test_data / "ts_dicom" / "dicom"))


@pytest.fixture(scope="session")
def default_model_bundle() -> ModelBundle:
    """The bundled default model (``resources.DEFAULT_BUNDLE``), loaded: segments real CT in about a second."""
    return load_bundle(DEFAULT_BUNDLE)


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


def crop(image: Image, box: tuple[slice, slice, slice]) -> Image:
    """The part of ``image`` inside ``box`` (slices along i, j, k), its affine moved to the crop's first voxel."""
    origin = np.array([s.indices(n)[0] for s, n in zip(box, image.shape)] + [1.0])
    affine = image.affine.copy()
    affine[:, 3] = image.affine @ origin
    return Image(np.ascontiguousarray(image.array[box]), affine)


def voxel_world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World (RAS mm) position of every voxel centre: array of shape (*shape, 3)."""
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def box_corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World positions of the 8 outer corners of a grid's field of view (voxel edges, not centres), sorted."""
    corners = np.array([[a, b, c] for a in (-0.5, shape[0] - 0.5) for b in (-0.5, shape[1] - 0.5) for c in (-0.5, shape[2] - 0.5)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world[np.lexsort(np.round(world, 3).T[::-1])]


def interruptible() -> None:
    """``preexec_fn`` of a child process that a test interrupts: SIGINT back to its default, as a terminal's
    process has it. Started in the background (``make test &``), the tests inherit SIGINT ignored, which the
    programs honour as they should (``nohup``), and a Ctrl-C test would then test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
