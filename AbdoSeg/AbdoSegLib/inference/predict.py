"""Prediction: CT Image + model bundle -> organ labelmap on the input grid."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import AbdoSegError
from ..image import Image
from ..model.bundle import ModelBundle
from ..model.preprocessing import PAD_VALUE, hounsfield, preprocess
from ..progress import NoProgress, Progress
from .cleanup import clean_labels, winning_class
from .fine_stage import refine
from .mirror_check import MirrorCheck, check_mirror, sides_learned
from .presence import OrganPresence, decide_presence, outside_field
from .sliding_window import sliding_window, window_starts
from .upsampling import canonical_labels


@dataclass
class Prediction:
    """labels: uint8 Image on the input grid (organs not found left out); device used;
    presence: {organ name: OrganPresence} for every organ of the table (``presence.py``: found or
    not and why, confidence); mirror: whether the image's header may be mirrored left-right
    (``mirror_check.py``); timings_s: seconds per stage."""

    labels: Image
    device: str
    presence: dict[str, OrganPresence]
    mirror: MirrorCheck
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def confidence(self) -> dict[str, float]:
        """{organ name: confidence in [0, 1]} of the organs found."""
        return {name: decision.confidence for name, decision in self.presence.items() if decision.found}


def resolve_device(requested: str = "auto") -> torch.device:
    """'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AbdoSegError(f"device {requested!r} was asked for, but PyTorch finds no CUDA GPU here; use --device cpu or auto.")
        return torch.device(requested)
    if requested == "cpu":
        return torch.device("cpu")
    raise AbdoSegError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N.")


def window_size(volume_shape: tuple[int, ...], max_patch: tuple[int, ...], divisor: int, kernel_size: int = 3) -> tuple[int, ...]:
    """Sliding-window size: the bundle's patch, shrunk to the volume rounded up to ``divisor``, but never
    below ``divisor * kernel_size`` voxels (nor above the patch), the volume padded up to it.

    The floor keeps a whole convolution kernel in the network's deepest stage (1/divisor of the window).
    A thinner window, one deepest voxel for a volume of up to 48 mm along an axis (16 voxels of 3 mm), lost
    most organs: a 39 mm coronal slab of the sample found only the left kidney; with 48 voxels it found
    all four at Dice 0.95-0.96, as with the whole 160-voxel patch.
    """
    smallest = divisor * kernel_size
    return tuple(min(p, max(smallest, divisor * math.ceil(n / divisor))) for n, p in zip(volume_shape, max_patch))


def count_windows(volume_shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Number of windows the sliding window visits (for progress)."""
    return math.prod(len(window_starts(n, r, overlap)) for n, r in zip(volume_shape, roi))


def infer_probabilities(
    network: torch.nn.Module,
    volume: torch.Tensor,
    roi: tuple[int, int, int],
    overlap: float,
    device: torch.device,
    progress: Progress = NoProgress(),
    batch_size: int = 1,
) -> torch.Tensor:
    """Softmax probabilities (C, X, Y, Z) float32 on the CPU for a volume (X, Y, Z) or (K, X, Y, Z) (K channels).

    Gaussian-weighted sliding window; windows run on ``device`` (fp16 autocast on CUDA only),
    ``batch_size`` at a time; the blended result is gathered on the CPU so that memory stays bounded
    on the GPU.
    """
    total = count_windows(tuple(volume.shape[-3:]), roi, overlap)
    done = 0

    def run(window: torch.Tensor) -> torch.Tensor:
        nonlocal done
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            logits = network(window.to(device))
        done += window.shape[0]
        progress("inference", min(done / total, 1.0), f"window {done} of {total}")
        return logits.float()

    with torch.inference_mode():
        logits = sliding_window(volume, roi, overlap, run, PAD_VALUE, batch_size)
        return torch.softmax(logits, dim=0)


def cleaned_labels(probabilities: torch.Tensor, hu: np.ndarray) -> np.ndarray:
    """(X, Y, Z) uint8 organ ids on the model grid: the argmax of (C, X, Y, Z) CPU probabilities,
    cleaned up (``cleanup.clean_labels``) with ``hu``, the (X, Y, Z) HU of the network's input
    (``preprocessing.hounsfield``)."""
    return clean_labels(winning_class(probabilities), hu)


def segment(image: Image, bundle: ModelBundle, device: str = "auto", progress: Progress = NoProgress()) -> Prediction:
    """Segment the organs of a CT Image with a bundle; labels land on the input's grid.

    After clean-up, each organ is kept or reported not found on the model grid (``presence.py``). A
    two-stage bundle then refines each organ found in a crop around it (``fine_stage.py``). When the
    liver is not convincing, the network also runs on the scan mirrored left-right (``mirror_check.py``).
    """
    timings: dict[str, float] = {}
    torch_device = resolve_device(device)
    network = bundle.network.to(torch_device)

    start = time.perf_counter()
    progress("preprocess", 0.0, "resampling to the model grid")
    volume, grid = preprocess(image, bundle.preprocessing)
    timings["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    roi = window_size(grid.shape, bundle.patch_size, network.config.divisor, network.config.kernel_size)
    probabilities = infer_probabilities(network, volume, roi, bundle.overlap, torch_device, progress)
    timings["inference"] = time.perf_counter() - start

    start = time.perf_counter()
    progress("postprocess", 0.0, "cleaning up and returning to the input grid")
    voxel_ml = abs(float(np.linalg.det(grid.affine[:3, :3]))) / 1000.0
    outside = outside_field(image, grid)
    hu = hounsfield(volume, bundle.preprocessing.hu_window)

    def judge(probabilities: torch.Tensor) -> tuple[np.ndarray, dict[str, OrganPresence]]:
        return decide_presence(probabilities, cleaned_labels(probabilities, hu), voxel_ml, outside, hu)

    kept, presence = judge(probabilities)
    labels, score, boxes = canonical_labels(probabilities, kept, grid)
    timings["postprocess"] = time.perf_counter() - start

    if bundle.fine:
        start = time.perf_counter()
        fine_network = bundle.fine.network.to(torch_device)

        def infer_fine(fine_volume: torch.Tensor) -> torch.Tensor:
            # Windows of the fine patch, never shrunk: a crop smaller than it is padded to it, as in training.
            fine_roi = bundle.fine.patch_size
            # On a GPU all windows of a crop (a few: the crop is about one organ) run as one batch.
            batch = count_windows(tuple(fine_volume.shape[1:]), fine_roi, bundle.fine.overlap) if torch_device.type == "cuda" else 1
            return infer_probabilities(fine_network, fine_volume, fine_roi, bundle.fine.overlap, torch_device, batch_size=batch)

        refine(image, labels, score, boxes, presence, (probabilities, grid), bundle.fine, bundle.preprocessing.hu_window, infer_fine, progress)
        timings["fine"] = time.perf_counter() - start

    start = time.perf_counter()
    del probabilities, score  # before a mirrored pass makes its own
    labels = grid.to_input_orientation(labels)
    timings["postprocess"] += time.perf_counter() - start

    def infer_mirrored(mirrored: torch.Tensor) -> torch.Tensor:
        progress("postprocess", 0.5, "the liver is not convincing: checking the scan mirrored left-right")
        return infer_probabilities(network, mirrored, roi, bundle.overlap, torch_device)

    start = time.perf_counter()
    mirror = check_mirror(presence, volume, infer_mirrored, lambda probabilities: judge(probabilities)[1], sides_learned(bundle.metadata))
    if mirror.mirrored is not None:
        timings["mirror_check"] = time.perf_counter() - start
    return Prediction(image.with_array(labels), str(torch_device), presence, mirror, timings)
