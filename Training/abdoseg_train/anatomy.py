"""Anatomy maps without CT (the raw material of synthetic CT), on the model grid.

An anatomy map labels the voxels of a real patient with structures (``structures.STRUCTURES``:
outside the body, the four organs, the rest of the body, bone, lung, vessels, bowel...). Two
forms are read, told apart by the files beside ``NAME_anatomy.nii.gz``:

- 3D-IRCADb maps store structure ids and draw the body (0 outside, 5 the rest of the body).
  ``NAME_anatomy.nii.gz`` is the map whose ids 1-4 are the training target (organs win
  overlaps); ``NAME_anatomy_detail.nii.gz`` the same with vessels and lesions drawn over the
  organs (what is painted); ``NAME_anatomy.json`` gives ``target_organs_segmented``, the organs
  really labelled: an organ not segmented lies inside ``body_other`` and is unknown, not background.
- Maps of other sets (TotalSegmentator v2, BTCV, AMOS) store the set's class ids, and their
  ``NAME_anatomy.json`` gives the set's label table as ``classes``; there is no detail map. The
  table must be a known one (``label_tables.py``), whose classes are translated by name to
  structures and target organs. These maps draw no body (0 is both the air and the unlabelled
  body), so one is drawn around the labelled voxels (``body_outline.py``): the 0 voxels inside it
  become ``body_other``. Labelled organs: every target organ the table has a class for (all four
  in each known table). These sets label such an organ wherever it is in view, so an organ
  missing from a map (not in the JSON's ``present``) is truly absent: background, not unknown.
  A pelvis-only scan with no organ thus teaches the network that there is nothing to find.
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
from AbdoSegLib.model.preprocessing import ModelGrid, Preprocessing, labels_to_model_grid, model_grid, same_physical_grid
from AbdoSegLib.organs import NUM_CLASSES, organ_by_name

from .body_outline import body_outline, wall_thickness_mm
from .label_tables import KNOWN_TABLES, LabelTable, find_table
from .prepared import organs_present
from .structures import MAP_STRUCTURES, STRUCTURE_IDS
from .thorax import add_thorax

MAP_SUFFIX = "_anatomy.nii.gz"
CACHE_VERSION = 2  # bump when the cached content changes


@dataclass(frozen=True)
class AnatomySource:
    """The files of one anatomy map; ``name`` is the file name without ``_anatomy.nii.gz``.

    ``detail``: the 3D-IRCADb detail map, None for a map of another set; ``table``: that set's
    label table, None for a 3D-IRCADb map.
    """

    name: str
    target: Path
    detail: Path | None
    info: Path
    table: LabelTable | None = None


@dataclass
class AnatomyCase:
    """One anatomy map on the model grid, in canonical RAS voxel order.

    structures: (X, Y, Z) uint8 structure ids (``structures.STRUCTURES``; lungs and heart drawn
    where a map leaves the chest unlabelled, ``thorax.py``);
    labels: (X, Y, Z) uint8 organ ids 0-4 (other structures -> 0);
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
    classes = _read_info(name, info).get("classes") if info.is_file() and not detail.is_file() else None
    if classes is None:  # a 3D-IRCADb map
        if not detail.is_file() and not info.is_file():
            raise AbdoSegError(f"anatomy map {name}: {detail} is missing, and no {info.name} gives its label table.")
        for companion in (target, detail, info):
            if not companion.is_file():
                raise AbdoSegError(f"anatomy map {name}: {companion} is missing.")
        return AnatomySource(name, target, detail, info)
    table = find_table(classes)
    if table is None:
        raise AbdoSegError(f"anatomy map {name}: the label table (classes) in {info.name} is none of the known ones "
                           f"({', '.join(known.name for known in KNOWN_TABLES)}).")
    return AnatomySource(name, target, None, info, table)


def load_anatomy(source: AnatomySource, spec: Preprocessing, cache_dir: Path | None = None) -> AnatomyCase:
    """Read an anatomy map onto the model grid of ``spec`` (nearest neighbour), cached."""
    cache_file = _cache_file(source, spec, cache_dir) if cache_dir else None
    labelled = source.table.labelled if source.table else _labelled_organs(source)
    if cache_file and cache_file.is_file():
        stored = np.load(cache_file)
        return AnatomyCase(source.name, stored["structures"], stored["labels"], stored["depth_mm"], labelled, stored["affine"])
    structures, labels, grid = _read_translated(source, spec) if source.table else _read_ircad(source, spec)
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    depth_mm = np.minimum(ndimage.distance_transform_edt(structures != STRUCTURE_IDS["outside"], sampling=spacing), 255).astype(np.uint8)
    if source.table is None or not source.table.labels_lungs:  # a table with lungs labels the heart too
        structures = add_thorax(structures, spacing, seed=zlib.crc32(source.name.encode()))
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_file, structures=structures, labels=labels, depth_mm=depth_mm, affine=grid.affine)
    return AnatomyCase(source.name, structures, labels, depth_mm, labelled, grid.affine)


def _read_ircad(source: AnatomySource, spec: Preprocessing) -> tuple[np.ndarray, np.ndarray, ModelGrid]:
    """A 3D-IRCADb map: structures from its detail map, labels from its target map."""
    target, detail = read_image(source.target), read_image(source.detail)
    if not same_physical_grid(target, detail):
        raise AbdoSegError(f"anatomy map {source.name}: its detail map is not on the grid of its target map.")
    grid = model_grid(detail, spec.spacing_mm)
    structures = labels_to_model_grid(detail, grid)
    if structures.max() >= len(MAP_STRUCTURES):
        raise AbdoSegError(f"anatomy map {source.name}: structure id {structures.max()} is not one of 0-{len(MAP_STRUCTURES) - 1}.")
    labels = labels_to_model_grid(target, grid)
    labels[labels >= NUM_CLASSES] = 0
    return structures, labels, grid


def _read_translated(source: AnatomySource, spec: Preprocessing) -> tuple[np.ndarray, np.ndarray, ModelGrid]:
    """A map of another set: its classes translated, and the body drawn around them."""
    image, table = read_image(source.target), source.table
    low, high = np.min(image.array), np.max(image.array)
    if low < 0 or high > max(table.classes):
        raise AbdoSegError(f"anatomy map {source.name}: its values {low}-{high} are not all class ids of its "
                           f"{table.name} label table (0-{max(table.classes)}).")
    grid = model_grid(image, spec.spacing_mm)
    classes = labels_to_model_grid(image, grid)
    structures, labels = table.structure_ids[classes], table.organ_ids[classes]
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    body = body_outline(classes > 0, spacing, wall_thickness_mm(source.name))
    structures[body & (classes == 0)] = STRUCTURE_IDS["body_other"]
    return structures, labels, grid


def _read_info(name: str, info: Path) -> dict:
    try:
        data = json.loads(info.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise AbdoSegError(f"anatomy map {name}: {info} cannot be read as JSON ({error}).") from None
    if not isinstance(data, dict):
        raise AbdoSegError(f"anatomy map {name}: {info} does not hold a JSON object.")
    return data


def _labelled_organs(source: AnatomySource) -> tuple[int, ...]:
    try:
        names = _read_info(source.name, source.info)["target_organs_segmented"]
        return tuple(sorted(organ_by_name(name).label for name in names))
    except (KeyError, TypeError) as error:
        raise AbdoSegError(f"anatomy map {source.name}: {source.info.name} does not list target_organs_segmented ({error}).") from None


def _cache_file(source: AnatomySource, spec: Preprocessing, cache_dir: Path) -> Path:
    companion = source.detail.stat().st_mtime if source.detail else source.table.name
    key = json.dumps([CACHE_VERSION, str(source.target.resolve()), source.target.stat().st_mtime, companion, spec.to_dict()])
    return Path(cache_dir) / f"anatomy-{source.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
