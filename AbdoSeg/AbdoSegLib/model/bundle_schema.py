"""What a model bundle must hold (format versions 1 and 2), checked whenever a bundle is read or written.

Every metadata field, its type and its range (booleans are not numbers: JSON ``true`` is not 1):

    format_version      1 (one stage) or 2 (two stages: a ``fine`` section, required)
    name                a non-empty string
    created             a string (optional)
    architecture        {name: "vnet", config: VNetConfig}
      config            in_channels 1 (one CT channel), num_classes 5 (background and the 4 organs),
                        width 1-64, depth 1-5, kernel_size odd 1-7, convs_per_stage depth + 1 integers 1-8
                        (the network is built before its weights are read: these bound its size)
    preprocessing       spacing_mm: 3 numbers from 0.3 to 10 mm (the voxel sizes a CT may have,
                        ``analysis.ctcheck``); hu_window: [low, high] HU, -2000 <= low, low + 10 <= high <= 4000
    inference           patch_size: 3 integers, multiples of 2**depth, at most 512 each and 256**3 voxels in all
                        (a window's activations must fit in memory); overlap: 0 to 0.9 (at 1 the sliding window
                        moves one voxel at a time: millions of windows, a run that seems to hang)
    labels              exactly ``organs.label_table()``
    training, validation  objects (optional): free-form records of how the model was made
    fine                version 2 only: the second stage, which refines each organ the first one found in a crop
                        around it (``inference.fine_stage``):
      architecture      as above, with in_channels 2 when coarse_channel (CT and the first stage's probability)
      spacing_mm        3 numbers as preprocessing.spacing_mm (the hu_window is the first stage's)
      crop_margin_mm    0 to 100 mm added around the first stage's organ on each side
      patch_size, overlap  as inference's, multiples of the fine network's 2**depth
      organs            the organs refined: distinct names of the label table, at least one
      coarse_channel    a boolean: whether the fine network also reads the first stage's probability of the organ

Any other key is refused (except inside training and validation): a field that this version does not
read would be silently ignored. Weights: every tensor finite (NaN weights make every organ empty).

A bundle outside these is refused with one sentence naming the field:
``<bundle> has <field> = <value>; <what is needed>.`` or ``<bundle> has no <field>; <what is needed>.``
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import AbdoSegError
from ..organs import label_table

SINGLE_STAGE_VERSION = 1
TWO_STAGE_VERSION = 2
MAX_CROP_MARGIN_MM = 100.0
SPACING_RANGE_MM = (0.3, 10.0)
HU_RANGE = (-2000.0, 4000.0)
MIN_WINDOW_HU = 10.0
MAX_PATCH = 512
MAX_PATCH_EDGE = 256  # of the cube with as many voxels as a window may have
MAX_OVERLAP = 0.9
CONFIG_RANGES = {"width": (1, 64), "depth": (1, 5), "kernel_size": (1, 7)}
CONVS_RANGE = (1, 8)

_ARCHITECTURE = "vnet"
_SECTIONS = {
    "": ("format_version", "name", "architecture", "preprocessing", "inference", "labels"),
    "architecture": ("name", "config"),
    "architecture.config": ("in_channels", "num_classes", "width", "depth", "kernel_size", "convs_per_stage"),
    "preprocessing": ("spacing_mm", "hu_window"),
    "inference": ("patch_size", "overlap"),
}
"""Required keys of each object (dotted path; "" the top level)."""
_OPTIONAL = {"": ("created", "training", "validation")}
_FINE_SECTIONS = {
    "": (*_SECTIONS[""], "fine"),
    "fine": ("architecture", "spacing_mm", "crop_margin_mm", "patch_size", "overlap", "organs", "coarse_channel"),
    "fine.architecture": ("name", "config"),
    "fine.architecture.config": _SECTIONS["architecture.config"],
}


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _int_in(low: int, high: int, odd: bool = False) -> Callable[[Any], bool]:
    return lambda value: is_int(value) and low <= value <= high and (not odd or value % 2 == 1)


def _ints(count: int, low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and len(value) == count and all(map(_int_in(low, high), value))


def _numbers(count: int, low: float, high: float) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and len(value) == count and all(is_number(x) and low <= x <= high for x in value)


def check_metadata(metadata: Any, path: str | Path) -> None:
    """Raise AbdoSegError (one sentence naming the field) unless ``metadata`` is a bundle's metadata as above."""
    if not isinstance(metadata, dict):
        raise AbdoSegError(f"{path} has damaged AbdoSeg metadata (not a JSON object).")
    version = metadata.get("format_version")
    if is_int(version) and version not in (SINGLE_STAGE_VERSION, TWO_STAGE_VERSION):
        raise AbdoSegError(f"{path} is a model bundle of format version {version}; this AbdoSeg reads versions "
                           f"{SINGLE_STAGE_VERSION} and {TWO_STAGE_VERSION}.")
    two_stage = version == TWO_STAGE_VERSION
    check = _Checker(metadata, path, {**_SECTIONS, **_FINE_SECTIONS} if two_stage else _SECTIONS)
    check("format_version", lambda v: v in (SINGLE_STAGE_VERSION, TWO_STAGE_VERSION) and is_int(v),
          f"the integer {SINGLE_STAGE_VERSION} (one stage) or {TWO_STAGE_VERSION} (two stages)")
    check("labels", lambda v: v == label_table(), f"exactly {json.dumps(label_table())}: AbdoSeg's organs and ids")
    check("name", lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
    for key in ("training", "validation"):
        if key in metadata:
            check(key, lambda v: isinstance(v, dict), "an object (a record of how the model was made)")
    if "created" in metadata:
        check("created", lambda v: isinstance(v, str), "a string (when the model was made)")

    depth = _check_architecture(check, "architecture", 1, "1 (one CT channel)")
    _check_spacing(check, "preprocessing.spacing_mm")
    low, high = HU_RANGE
    check("preprocessing.hu_window", lambda v: _numbers(2, low, high)(v) and v[1] - v[0] >= MIN_WINDOW_HU,
          f"[low, high] in HU from {low:g} to {high:g} with low at least {MIN_WINDOW_HU:g} HU below high")
    _check_window(check, "inference", depth)
    if two_stage:
        _check_fine(check)
    check.unknown_keys()


def _check_architecture(check: _Checker, section: str, in_channels: int, channels_need: str) -> int:
    """The V-Net of ``section`` (architecture or fine.architecture); returns its depth."""
    check(f"{section}.name", lambda v: v == _ARCHITECTURE, f"{_ARCHITECTURE!r}, the only architecture AbdoSeg knows")
    config = f"{section}.config"
    check(f"{config}.in_channels", lambda v: v == in_channels and is_int(v), channels_need)
    classes = len(label_table()) + 1
    check(f"{config}.num_classes", lambda v: v == classes and is_int(v), f"{classes} (background and the {classes - 1} organs)")
    for key, (low, high) in CONFIG_RANGES.items():
        odd = key == "kernel_size"
        check(f"{config}.{key}", _int_in(low, high, odd), f"an integer from {low} to {high}{' and odd' if odd else ''}")
    depth = check.value(f"{config}.depth")
    check(f"{config}.convs_per_stage", _ints(depth + 1, *CONVS_RANGE),
          f"{depth + 1} integers (depth + 1) from {CONVS_RANGE[0]} to {CONVS_RANGE[1]}: convolutions per stage")
    return depth


def _check_spacing(check: _Checker, field: str) -> None:
    low, high = SPACING_RANGE_MM
    check(field, _numbers(3, low, high), f"3 numbers from {low:g} to {high:g} mm (the model's voxel size along R, A, S)")


def _check_window(check: _Checker, section: str, depth: int) -> None:
    """patch_size and overlap of the sliding window of ``section`` (inference or fine) for a network of ``depth``."""
    divisor, edge = 2**depth, MAX_PATCH_EDGE
    check(f"{section}.patch_size", lambda v: _ints(3, divisor, MAX_PATCH)(v) and all(n % divisor == 0 for n in v) and math.prod(v) <= edge**3,
          f"3 integers from {divisor} to {MAX_PATCH} that are multiples of {divisor} (2**depth), at most {edge}x{edge}x{edge} voxels in all")
    check(f"{section}.overlap", lambda v: is_number(v) and 0 <= v <= MAX_OVERLAP,
          f"a number from 0 to {MAX_OVERLAP:g} (the share of a sliding window that the next one covers again)")


def _check_fine(check: _Checker) -> None:
    """The ``fine`` section of a two-stage bundle."""
    check("fine", lambda v: isinstance(v, dict), f"an object with {', '.join(_FINE_SECTIONS['fine'])} (the second stage)")
    check("fine.coarse_channel", lambda v: isinstance(v, bool), "true or false (whether the fine network reads the first stage's probability)")
    with_prior = check.value("fine.coarse_channel")
    depth = _check_architecture(check, "fine.architecture", 2 if with_prior else 1,
                                "2 (CT and the first stage's probability: coarse_channel is true)" if with_prior
                                else "1 (one CT channel: coarse_channel is false)")
    _check_spacing(check, "fine.spacing_mm")
    check("fine.crop_margin_mm", lambda v: is_number(v) and 0 <= v <= MAX_CROP_MARGIN_MM,
          f"a number from 0 to {MAX_CROP_MARGIN_MM:g} mm (added around the first stage's organ)")
    _check_window(check, "fine", depth)
    names = [entry["name"] for entry in label_table()]
    check("fine.organs", lambda v: isinstance(v, list) and v != [] and all(n in names for n in v) and len(set(v)) == len(v),
          f"a list of distinct organ names from {', '.join(names)} (the organs the second stage refines)")


def check_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise AbdoSegError naming the first tensor that holds a NaN or an infinity."""
    for key, tensor in state.items():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise AbdoSegError(f"{path} has weights[{key!r}] = NaN or infinity in {bad} of {tensor.numel()} values; "
                               "every weight must be a finite number (did the training diverge?).")


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


class _Checker:
    """``check(field, ok, need)``: the value at a dotted ``field`` of the metadata passes ``ok``, or one sentence."""

    def __init__(self, metadata: dict, path: str | Path, sections: dict[str, tuple[str, ...]]):
        self.metadata, self.path, self.sections = metadata, path, sections

    def value(self, field: str) -> Any:
        """The value at ``field``, already checked."""
        return self._get(field)

    def __call__(self, field: str, ok: Callable[[Any], bool], need: str) -> None:
        value = self._get(field)
        if value is _ABSENT:
            raise AbdoSegError(f"{self.path} has no {field}; a bundle needs {need}.")
        if not ok(value):
            raise AbdoSegError(f"{self.path} has {field} = {_show(value)}; it must be {need}.")

    def _get(self, field: str) -> Any:
        """The value at ``field`` (``_ABSENT`` if only its last key is missing); the objects on the way must be there."""
        keys = field.split(".")
        value = self.metadata
        for depth, key in enumerate(keys):
            if key not in value:
                if depth == len(keys) - 1:
                    return _ABSENT
                raise AbdoSegError(f"{self.path} has no {'.'.join(keys[:depth + 1])}; a bundle needs {self._object(keys[:depth + 1])}.")
            value = value[key]
            if depth < len(keys) - 1 and not isinstance(value, dict):
                raise AbdoSegError(f"{self.path} has {'.'.join(keys[:depth + 1])} = {_show(value)}; it must be {self._object(keys[:depth + 1])}.")
        return value

    def _object(self, keys: list[str]) -> str:
        return f"an object with {', '.join(self.sections['.'.join(keys)])}"

    def unknown_keys(self) -> None:
        version = self.metadata["format_version"]
        for section, keys in self.sections.items():
            value = self._get(section) if section else self.metadata
            extra = [key for key in value if key not in keys + _OPTIONAL.get(section, ())]
            if extra:
                field = f"{section}.{extra[0]}" if section else extra[0]
                raise AbdoSegError(f"{self.path} has {field} = {_show(value[extra[0]])}; format version {version} has no such field "
                                   "(was the bundle written by another program?).")


_ABSENT = object()
