"""Cases preprocessed with the engine's own preprocessing, computed once and cached."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from AbdoSegLib.ctcheck import check_ct
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.imageio import read_image
from AbdoSegLib.organs import NUM_CLASSES
from AbdoSegLib.preprocessing import Preprocessing, labels_to_model_grid, preprocess
from AbdoSegLib.regrid import labels_onto_grid

from .cases import Case


@dataclass
class PreparedCase:
    """image: (X, Y, Z) float32 normalised CT on the model grid (canonical RAS order);
    labels: (X, Y, Z) uint8 on the same grid; labelled: organ ids really labelled."""

    name: str
    image: torch.Tensor
    labels: torch.Tensor
    labelled: tuple[int, ...]


def prepare(case: Case, spec: Preprocessing, cache_dir: Path | None = None) -> PreparedCase:
    """Load and preprocess a case (from the cache when it holds this case and spec)."""
    cache_file = _cache_file(case, spec, cache_dir) if cache_dir else None
    if cache_file and cache_file.is_file():
        stored = np.load(cache_file)
        return PreparedCase(case.name, torch.from_numpy(stored["image"]), torch.from_numpy(stored["labels"]), case.labelled)
    try:
        ct = read_image(case.image)
        check_ct(ct, str(case.image))
        labels = labels_onto_grid(read_image(case.labels), ct)
        unknown = sorted(set(np.unique(labels.array).tolist()) - set(range(NUM_CLASSES)))
        if unknown:
            raise AbdoSegError(f"its label map holds ids {unknown} outside 0..{NUM_CLASSES - 1}; map them to AbdoSeg ids first")
    except AbdoSegError as error:
        raise AbdoSegError(f"case {case.name}: {error}") from None
    image, grid = preprocess(ct, spec)
    model_labels = labels_to_model_grid(labels, grid)
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, image=image.numpy(), labels=model_labels)
    return PreparedCase(case.name, image, torch.from_numpy(model_labels), case.labelled)


def _cache_file(case: Case, spec: Preprocessing, cache_dir: Path) -> Path:
    stat = case.image.stat()
    key = json.dumps([str(case.image.resolve()), stat.st_mtime, str(case.labels.resolve()), spec.to_dict()])
    return Path(cache_dir) / f"{case.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
