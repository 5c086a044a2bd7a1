"""The model bundle: one safetensors file holding the V-Net weights and JSON metadata.

safetensors loads without pickle, so a bundle cannot run code. The metadata (header key
``abdoseg``) records everything inference needs and how the model was made:

    format_version, name, created, architecture {name, config}, preprocessing
    {spacing_mm, hu_window}, inference {patch_size, overlap}, labels [{label, name}],
    training {...}, validation {...}

A bundle that is not a safetensors file, lacks the metadata, breaks the metadata's schema
(``bundle_schema``: every field's type and range, the format version, the label table) or has
weights that do not fit its architecture or are not finite is refused with one sentence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import AbdoSegError
from ..io.atomic import atomic_path
from ..organs import label_table
from ..resources import DEFAULT_BUNDLE
from .bundle_schema import FORMAT_VERSION, check_metadata, check_weights
from .preprocessing import Preprocessing
from .vnet import VNet, VNetConfig

METADATA_KEY = "abdoseg"


@dataclass
class ModelBundle:
    """A loaded bundle: the network (eval mode, on the CPU), its metadata and file checksum."""

    network: VNet
    metadata: dict
    sha256: str
    path: Path

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
    overlap: float = 0.25,
    training: dict | None = None,
    validation: dict | None = None,
) -> str:
    """Write a bundle atomically; returns its SHA-256 (hex). Metadata outside ``bundle_schema`` is refused (AbdoSegError)."""
    divisor = network.config.divisor
    if any(n % divisor for n in patch_size):
        raise ValueError(f"patch size {patch_size} must be divisible by {divisor}")
    metadata = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": created,
        "architecture": {"name": "vnet", "config": network.config.to_dict()},
        "preprocessing": preprocessing.to_dict(),
        "inference": {"patch_size": list(patch_size), "overlap": overlap},
        "labels": label_table(),
        "training": training or {},
        "validation": validation or {},
    }
    check_metadata(json.loads(json.dumps(metadata)), path)  # as a reader will see it: tuples are lists
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in network.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(metadata)})
    return file_sha256(path)


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
    """Load and check a bundle (metadata and finite weights); the network is returned in eval mode on the CPU."""
    path = Path(path)
    metadata = read_metadata(path)
    try:
        config = VNetConfig.from_dict(metadata["architecture"]["config"])
        network = VNet(config)
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        network.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, TypeError, ValueError, KeyError) as error:
        raise AbdoSegError(f"{path} has weights that do not fit its architecture ({_short(error)}).") from None
    check_weights(state, path)
    network.eval()
    return ModelBundle(network, metadata, file_sha256(path), path)


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
