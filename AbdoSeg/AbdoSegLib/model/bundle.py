"""The model bundle: one safetensors file holding the V-Net weights and JSON metadata.

safetensors loads without pickle, so a bundle cannot run code. The metadata (header key
``abdoseg``) records everything inference needs and how the model was made:

    format_version, name, created, architecture {name, config}, preprocessing
    {spacing_mm, hu_window}, inference {patch_size, overlap}, labels [{label, name}],
    training {...}, validation {...}, and in a two-stage bundle (format version 2)
    fine {architecture, spacing_mm, crop_margin_mm, patch_size, overlap, organs, coarse_channel}

The first stage's weights are stored under the network's own names (as in a version 1 bundle),
the second stage's under the same names prefixed with ``fine.``. They are float32, or float16 where the
bundle was saved with ``half`` (half the file: a two-stage bundle stays small); either loads into float32
networks, which is how they run.

A bundle that is not a safetensors file, lacks the metadata, breaks the metadata's schema
(``bundle_schema``: every field's type and range, the format version, the label table) or has
weights that do not fit its architecture or are not finite is refused with one sentence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import AbdoSegError
from ..io.atomic import atomic_path
from ..organs import ORGANS, label_table
from ..resources import DEFAULT_BUNDLE
from .bundle_schema import SINGLE_STAGE_VERSION, TWO_STAGE_VERSION, check_metadata, check_weights
from .preprocessing import Preprocessing
from .vnet import VNet, VNetConfig

METADATA_KEY = "abdoseg"
FINE_PREFIX = "fine."
DEFAULT_OVERLAP = 0.25  # of neighbouring sliding windows, as a share of the window


@dataclass
class FineStage:
    """The second stage of a bundle: a V-Net that refines each organ in a crop around the first stage's organ.

    spacing_mm: its voxel size along R, A, S (mm); crop_margin_mm: added around the first stage's organ on
    each side; patch_size, overlap: its sliding window; organs: names of the organs it refines;
    coarse_channel: whether its input has a second channel, the first stage's probability of the organ.
    """

    network: VNet
    spacing_mm: tuple[float, float, float]
    crop_margin_mm: float
    patch_size: tuple[int, int, int]
    overlap: float = DEFAULT_OVERLAP
    organs: tuple[str, ...] = tuple(organ.name for organ in ORGANS)
    coarse_channel: bool = False

    def to_dict(self) -> dict:
        return {"architecture": {"name": "vnet", "config": self.network.config.to_dict()}, "spacing_mm": list(self.spacing_mm),
                "crop_margin_mm": self.crop_margin_mm, "patch_size": list(self.patch_size), "overlap": self.overlap,
                "organs": list(self.organs), "coarse_channel": self.coarse_channel}

    @classmethod
    def from_dict(cls, network: VNet, data: dict) -> FineStage:
        return cls(network, tuple(float(v) for v in data["spacing_mm"]), float(data["crop_margin_mm"]),
                   tuple(int(n) for n in data["patch_size"]), float(data["overlap"]), tuple(data["organs"]), bool(data["coarse_channel"]))


@dataclass
class ModelBundle:
    """A loaded bundle: the network (eval mode, on the CPU), its metadata and file checksum; ``fine``:
    the second stage (its network in eval mode on the CPU), None in a single-stage bundle."""

    network: VNet
    metadata: dict
    sha256: str
    path: Path
    fine: FineStage | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.metadata["preprocessing"])

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.metadata["inference"]["patch_size"])

    @property
    def overlap(self) -> float:
        return float(self.metadata["inference"]["overlap"])

    @property
    def model_id(self) -> str:
        """Name plus the first 12 hex digits of the checksum: identifies the exact file."""
        return f"{self.metadata.get('name', self.path.stem)}@{self.sha256[:12]}"


def save_bundle(
    path: str | Path,
    network: VNet,
    preprocessing: Preprocessing,
    patch_size: tuple[int, int, int],
    name: str,
    created: str,
    overlap: float = DEFAULT_OVERLAP,
    training: dict | None = None,
    validation: dict | None = None,
    fine: FineStage | None = None,
    half: bool = False,
) -> str:
    """Write a bundle atomically; returns its SHA-256 (hex). Metadata outside ``bundle_schema`` is refused (AbdoSegError).

    Without ``fine`` the bundle has format version 1 (one stage), with it version 2. ``half``: store the
    weights as float16 (a weight beyond float16's range, 65504, is refused with AbdoSegError).
    """
    for window, divisor in [(patch_size, network.config.divisor)] + ([(fine.patch_size, fine.network.config.divisor)] if fine else []):
        if any(n % divisor for n in window):
            raise ValueError(f"patch size {window} must be divisible by {divisor}")
    metadata = {
        "format_version": TWO_STAGE_VERSION if fine else SINGLE_STAGE_VERSION,
        "name": name,
        "created": created,
        "architecture": {"name": "vnet", "config": network.config.to_dict()},
        "preprocessing": preprocessing.to_dict(),
        "inference": {"patch_size": list(patch_size), "overlap": overlap},
        "labels": label_table(),
        "training": training or {},
        "validation": validation or {},
    }
    if fine:
        metadata["fine"] = fine.to_dict()
    check_metadata(json.loads(json.dumps(metadata)), path)  # as a reader will see it: tuples are lists
    tensors = dict(network.state_dict())
    if fine:
        tensors.update({FINE_PREFIX + key: value for key, value in fine.network.state_dict().items()})
    tensors = {key: _stored(key, value, half, path) for key, value in tensors.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(metadata)})
    return file_sha256(path)


def _stored(key: str, tensor: torch.Tensor, half: bool, path: str | Path) -> torch.Tensor:
    """``tensor`` as written to the file: on the CPU, contiguous, and float16 when ``half``."""
    tensor = tensor.detach().to("cpu")
    if half and tensor.is_floating_point():
        rounded = tensor.half()
        if bool(torch.isinf(rounded).any()) and not bool(torch.isinf(tensor).any()):
            raise AbdoSegError(f"{path} was not written: weights[{key!r}] exceed float16's range (65504); export it without --half.")
        tensor = rounded
    return tensor.contiguous()


def read_metadata(path: str | Path) -> dict:
    """The bundle's metadata, checked against ``bundle_schema`` (weights not read)."""
    path = Path(path)
    if not path.is_file():
        raise AbdoSegError(f"model bundle {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise AbdoSegError(f"{path} is not a readable model bundle ({error}).") from None
    if METADATA_KEY not in header:
        raise AbdoSegError(f"{path} is a safetensors file but not an AbdoSeg model bundle (no '{METADATA_KEY}' metadata).")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError:
        raise AbdoSegError(f"{path} has damaged AbdoSeg metadata (not valid JSON).") from None
    check_metadata(metadata, path)
    return metadata


def load_bundle(path: str | Path = DEFAULT_BUNDLE) -> ModelBundle:
    """Load and check a bundle (metadata and finite weights); the networks are returned in eval mode on the CPU."""
    path = Path(path)
    metadata = read_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        fine_state = {key[len(FINE_PREFIX):]: state.pop(key) for key in list(state) if key.startswith(FINE_PREFIX)} if "fine" in metadata else {}
        network = _network(metadata["architecture"], state)
        fine = FineStage.from_dict(_network(metadata["fine"]["architecture"], fine_state), metadata["fine"]) if "fine" in metadata else None
    except (SafetensorError, RuntimeError, TypeError, ValueError, KeyError) as error:
        raise AbdoSegError(f"{path} has weights that do not fit its architecture ({_short(error)}).") from None
    check_weights(state, path)
    check_weights({FINE_PREFIX + key: value for key, value in fine_state.items()}, path)
    return ModelBundle(network, metadata, file_sha256(path), path, fine)


def _network(architecture: dict, state: dict) -> VNet:
    """The V-Net of an ``architecture`` section with the weights of ``state`` (all of them: strict), in eval mode."""
    network = VNet(VNetConfig.from_dict(architecture["config"]))
    network.load_state_dict(state, strict=True)
    return network.eval()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _short(error: Exception) -> str:
    """The informative line of an error: PyTorch's load errors put it after a heading line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    return lines[0][:240] if lines else type(error).__name__
