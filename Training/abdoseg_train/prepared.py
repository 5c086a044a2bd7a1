"""Cases preprocessed with the engine's own preprocessing, computed once and cached."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from AbdoSegLib.analysis.ctcheck import check_ct
from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.io.regrid import labels_onto_grid
from AbdoSegLib.model.preprocessing import Preprocessing, labels_to_model_grid, preprocess, same_physical_grid

from .cases import Case

CACHE_VERSION = 2  # bump when the cached content changes


@dataclass
class PreparedCase:
    """image: (X, Y, Z) float32 normalised CT on the model grid (canonical RAS order);
    labels: (X, Y, Z) uint8 on the same grid; labelled: organ ids really labelled;
    affine: (4, 4) the model grid's voxel-to-RAS mm transform."""

    name: str
    image: torch.Tensor
    labels: torch.Tensor
    labelled: tuple[int, ...]
    affine: np.ndarray

    @cached_property
    def organ_labels(self) -> frozenset[int]:
        """The organ ids that occur in the labels."""
        return organs_present(self.labels)


def prepare(case: Case, spec: Preprocessing, cache_dir: Path | None = None) -> PreparedCase:
    """Load and preprocess a case (from the cache when it holds this case and spec)."""
    cache_file = _cache_file(case, spec, cache_dir) if cache_dir else None
    if cache_file and cache_file.is_file():
        stored = np.load(cache_file)
        return PreparedCase(case.name, torch.from_numpy(stored["image"]), torch.from_numpy(stored["labels"]), case.labelled, stored["affine"])
    try:
        ct = read_image(case.image)
        check_ct(ct, str(case.image))
        labels = case.load_labels()
        if not same_physical_grid(labels, ct):
            raise AbdoSegError(
                f"its label map ({'x'.join(map(str, labels.shape))} voxels of "
                f"{'x'.join(f'{s:.2f}' for s in labels.spacing)} mm) is not on the grid of its CT "
                f"({'x'.join(map(str, ct.shape))} voxels of {'x'.join(f'{s:.2f}' for s in ct.spacing)} mm)."
            )
        labels = labels_onto_grid(labels, ct)  # same grid, possibly another voxel order
    except AbdoSegError as error:
        message = str(error)
        raise AbdoSegError(message if message.startswith(f"case {case.name}") else f"case {case.name}: {message}") from None
    image, grid = preprocess(ct, spec)
    model_labels = labels_to_model_grid(labels, grid)
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, image=image.numpy(), labels=model_labels, affine=grid.affine)
    return PreparedCase(case.name, image, torch.from_numpy(model_labels), case.labelled, grid.affine)


def _cache_file(case: Case, spec: Preprocessing, cache_dir: Path) -> Path:
    stat = case.image.stat()
    sources = {"labels": str(case.labels), "masks": {str(k): str(v) for k, v in sorted(case.masks.items())},
               "mapping": {str(k): v for k, v in sorted((case.mapping or {}).items())}}
    key = json.dumps([CACHE_VERSION, str(case.image.resolve()), stat.st_mtime, sources, spec.to_dict()])
    return Path(cache_dir) / f"{case.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def organs_present(labels: np.ndarray | torch.Tensor) -> frozenset[int]:
    """The organ ids (non-zero) that occur in (X, Y, Z) labels, a numpy array or a CPU tensor."""
    return frozenset(int(v) for v in np.unique(np.asarray(labels))) - {0}
