"""Anatomy maps without CT (the raw material of synthetic CT), on the model grid.

An anatomy map labels every voxel of a real patient with a structure (``MAP_STRUCTURES``: outside
the body, the four organs, the rest of the body, bone, lung, vessels, lesions...). Each map
comes as three files side by side:

- ``NAME_anatomy.nii.gz``: the map whose ids 1-4 are the training target (organs win overlaps);
- ``NAME_anatomy_detail.nii.gz``: the same with vessels and lesions drawn over the organs (what
  is painted);
- ``NAME_anatomy.json``: ``target_organs_segmented``, the organs really labelled (an organ that
  is not segmented lies inside ``body_other`` and is unknown, not background).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage

from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.organs import NUM_CLASSES, organ_by_name
from AbdoSegLib.model.preprocessing import Preprocessing, labels_to_model_grid, model_grid, same_physical_grid

from .prepared import organs_present
from .structures import MAP_STRUCTURES, STRUCTURE_IDS
from .thorax import add_thorax

MAP_SUFFIX = "_anatomy.nii.gz"
CACHE_VERSION = 2  # bump when the cached content changes


@dataclass(frozen=True)
class AnatomySource:
    """The three files of one anatomy map; ``name`` is the file name without ``_anatomy.nii.gz``."""

    name: str
    target: Path
    detail: Path
    info: Path


@dataclass
class AnatomyCase:
    """One anatomy map on the model grid, in canonical RAS voxel order.

    structures: (X, Y, Z) uint8 structure ids (``structures.STRUCTURES``: the detail map, with
    lungs and heart drawn where it leaves the chest unlabelled, ``thorax.py``);
    labels: (X, Y, Z) uint8 organ ids 0-4 (target map; other structures -> 0);
    depth_mm: (X, Y, Z) uint8 distance below the body surface in mm (capped at 255);
    labelled: organ ids really segmented; affine: (4, 4) model grid voxel-to-RAS mm.
    """

    name: str
    structures: np.ndarray
    labels: np.ndarray
    depth_mm: np.ndarray
    labelled: tuple[int, ...]
    affine: np.ndarray

    @cached_property
    def organ_labels(self) -> frozenset[int]:
        return organs_present(self.labels)


def discover_anatomy(path: Path) -> list[AnatomySource]:
    """The anatomy maps in a folder (every ``*_anatomy.nii.gz``), or the one map ``path`` names."""
    path = Path(path)
    if not path.exists():
        raise AbdoSegError(f"{path} does not exist.")
    if path.is_dir():
        maps = sorted(path.glob(f"*{MAP_SUFFIX}"))
        if not maps:
            raise AbdoSegError(f"{path} holds no anatomy maps (*{MAP_SUFFIX}).")
        return [_source(p) for p in maps]
    if not path.name.endswith(MAP_SUFFIX):
        raise AbdoSegError(f"{path} is not an anatomy map (a folder, or a file ending in {MAP_SUFFIX}).")
    return [_source(path)]


def _source(target: Path) -> AnatomySource:
    name = target.name[: -len(MAP_SUFFIX)]
    detail, info = target.with_name(f"{name}_anatomy_detail.nii.gz"), target.with_name(f"{name}_anatomy.json")
    for companion in (target, detail, info):
        if not companion.is_file():
            raise AbdoSegError(f"anatomy map {name}: {companion} is missing.")
    return AnatomySource(name, target, detail, info)


def load_anatomy(source: AnatomySource, spec: Preprocessing, cache_dir: Path | None = None) -> AnatomyCase:
    """Read an anatomy map onto the model grid of ``spec`` (nearest neighbour), cached."""
    cache_file = _cache_file(source, spec, cache_dir) if cache_dir else None
    labelled = _labelled_organs(source)
    if cache_file and cache_file.is_file():
        stored = np.load(cache_file)
        return AnatomyCase(source.name, stored["structures"], stored["labels"], stored["depth_mm"], labelled, stored["affine"])
    target, detail = read_image(source.target), read_image(source.detail)
    if not same_physical_grid(target, detail):
        raise AbdoSegError(f"anatomy map {source.name}: its detail map is not on the grid of its target map.")
    grid = model_grid(detail, spec.spacing_mm)
    structures = labels_to_model_grid(detail, grid)
    if structures.max() >= len(MAP_STRUCTURES):
        raise AbdoSegError(f"anatomy map {source.name}: structure id {structures.max()} is not one of 0-{len(MAP_STRUCTURES) - 1}.")
    labels = labels_to_model_grid(target, grid)
    labels[labels >= NUM_CLASSES] = 0
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    depth_mm = np.minimum(ndimage.distance_transform_edt(structures != STRUCTURE_IDS["outside"], sampling=spacing), 255).astype(np.uint8)
    structures = add_thorax(structures, spacing, seed=zlib.crc32(source.name.encode()))
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, structures=structures, labels=labels, depth_mm=depth_mm, affine=grid.affine)
    return AnatomyCase(source.name, structures, labels, depth_mm, labelled, grid.affine)


def _labelled_organs(source: AnatomySource) -> tuple[int, ...]:
    try:
        names = json.loads(source.info.read_text())["target_organs_segmented"]
        return tuple(sorted(organ_by_name(name).label for name in names))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise AbdoSegError(f"anatomy map {source.name}: {source.info.name} does not list target_organs_segmented ({error}).") from None


def _cache_file(source: AnatomySource, spec: Preprocessing, cache_dir: Path) -> Path:
    key = json.dumps([CACHE_VERSION, str(source.target.resolve()), source.target.stat().st_mtime,
                      source.detail.stat().st_mtime, spec.to_dict()])
    return Path(cache_dir) / f"anatomy-{source.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
