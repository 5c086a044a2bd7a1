"""Label maps from other sources, as AbdoSeg ids: presets of public datasets, custom mappings,
and Slicer segmentations whose segments are matched to organs by terminology or name.

A mapping is {their id: our id}; their ids that are not in it become background (0).
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import nrrd
import numpy as np
import slicerio
from slicerio.segmentation import segments_from_terminology

from ..errors import AbdoSegError
from ..image import Image
from ..organs import BACKGROUND, NUM_CLASSES, ORGANS, Organ, organ_by_name, organ_from_name
from .image_files import first_line, read_image
from .itk_grid import LPS_TO_RAS

SEGMENTATION_SUFFIX = ".seg.nrrd"

PRESETS: dict[str, dict[int, str]] = {
    # TotalSegmentator v2 "total" task: spleen 1, kidney_right 2, kidney_left 3, liver 5.
    "totalsegmentator": {5: "liver", 2: "right_kidney", 3: "left_kidney", 1: "spleen"},
    # BTCV (Synapse multi-organ) and AMOS: spleen 1, right kidney 2, left kidney 3, liver 6.
    "btcv": {6: "liver", 2: "right_kidney", 3: "left_kidney", 1: "spleen"},
    "amos": {6: "liver", 2: "right_kidney", 3: "left_kidney", 1: "spleen"},
    # FLARE22: liver 1, right kidney 2, spleen 3, left kidney 13.
    "flare22": {1: "liver", 2: "right_kidney", 13: "left_kidney", 3: "spleen"},
}
"""Label ids of public datasets and tools -> AbdoSeg organ names."""

_OUR_IDS = ", ".join([f"{BACKGROUND} background"] + [f"{organ.label} {organ.name}" for organ in ORGANS])


def parse_mapping(text: str) -> dict[int, int]:
    """{their id: our id} from a preset name, a JSON file {"their id": our id or organ name}, or
    'theirs:ours,...' (ours: an id or an organ name)."""
    if text.strip().lower() in PRESETS:
        return {theirs: organ_by_name(name).label for theirs, name in PRESETS[text.strip().lower()].items()}
    if text.lower().endswith(".json"):
        return _mapping_from_file(Path(text))
    if ":" not in text:
        raise AbdoSegError(f"--map {text!r} is neither a preset ({', '.join(PRESETS)}), a .json file, nor 'theirs:ours' pairs such as '5:1,2:2,3:3,1:4'.")
    pairs = []
    for pair in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\w+)\s*", pair)
        if not match:
            raise AbdoSegError(f"--map: {pair.strip()!r} is not a 'theirs:ours' pair of ids, such as '5:1'.")
        pairs.append((int(match.group(1)), match.group(2)))
    return _mapping_from_pairs(pairs)


def _mapping_from_file(path: Path) -> dict[int, int]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AbdoSegError(f"--map: the mapping file {path} does not exist.") from None
    except (OSError, json.JSONDecodeError) as error:
        raise AbdoSegError(f"--map: {path} is not a JSON mapping ({error}).") from None
    if not isinstance(data, dict) or not all(str(k).strip().isdigit() for k in data):
        raise AbdoSegError(f"--map: {path} must hold one JSON object of their ids to ours, such as {{\"6\": \"liver\", \"1\": \"spleen\"}}.")
    return _mapping_from_pairs([(int(k), str(v)) for k, v in data.items()])


def _mapping_from_pairs(pairs: list[tuple[int, str]]) -> dict[int, int]:
    mapping: dict[int, int] = {}
    for theirs, ours in pairs:
        if theirs in mapping:
            raise AbdoSegError(f"--map gives their id {theirs} twice.")
        mapping[theirs] = _our_id(ours)
    return mapping


def _our_id(text: str) -> int:
    """An AbdoSeg id given as a number or an organ name."""
    if text.isdigit() and int(text) < NUM_CLASSES:
        return int(text)
    try:
        return organ_by_name(text).label
    except KeyError:
        raise AbdoSegError(f"--map: {text!r} is not one of AbdoSeg's ids ({_OUR_IDS}).") from None


def read_labels(path: Path, mapping: dict[int, int] | None, require_match: bool = True) -> Image:
    """A labelmap file or a Slicer .seg.nrrd as AbdoSeg ids (uint8, shape (I, J, K), RAS affine).

    Without ``mapping`` the file must hold AbdoSeg's ids only; with it, their ids become ours
    and ids that are not in the map become background. ``require_match`` refuses a map none
    of whose ids occur (a wrong --map); a training image may lack its organ, so training
    turns it off.
    """
    if path.name.lower().endswith(SEGMENTATION_SUFFIX):
        if mapping is not None:
            raise AbdoSegError(f"--map applies to labelmaps, but {path} is a Slicer segmentation, whose segments are matched by terminology or name.")
        return read_segmentation(path)
    image = read_image(path)
    array = image.array
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise AbdoSegError(f"{path} holds non-integer values; a labelmap of organ ids is needed.")
        array = array.astype(np.int64)
    present = np.unique(array)
    if present[0] < 0:
        raise AbdoSegError(f"{path} holds negative label ids; a labelmap of organ ids is needed.")
    if mapping is None:
        foreign = [int(i) for i in present if i >= NUM_CLASSES]
        if foreign:
            raise AbdoSegError(
                f"{path} holds label ids {_some(foreign)} that are not AbdoSeg's ({_OUR_IDS}); "
                f"for a reference, give --map with a preset ({', '.join(PRESETS)}) or 'theirs:ours' pairs."
            )
        return image.with_array(array.astype(np.uint8))
    if require_match and not set(mapping) & {int(i) for i in present}:
        raise AbdoSegError(f"{path} holds none of the ids that --map maps ({_some(sorted(mapping))}); its ids are {_some([int(i) for i in present])}.")
    labels = np.zeros(array.shape, np.uint8)
    for theirs, ours in mapping.items():
        labels[array == theirs] = ours
    return image.with_array(labels)


def read_segmentation(path: Path) -> Image:
    """A Slicer .seg.nrrd as AbdoSeg ids: each organ is the union of the segments that match it."""
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except (OSError, ValueError, KeyError, IndexError, EOFError, zlib.error, nrrd.NRRDError) as error:
        raise AbdoSegError(f"{path} could not be read as a Slicer segmentation ({first_line(error)}).") from None
    voxels = np.asarray(segmentation["voxels"])
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    if layers.ndim != 4 or min(layers.shape[1:]) < 2:
        raise AbdoSegError(f"{path} is a segmentation of size {'x'.join(map(str, voxels.shape))}; a 3D one is needed.")
    labels = np.zeros(layers.shape[1:], np.uint8)
    matched = False
    for organ in ORGANS:
        for segment in _matching_segments(segmentation, organ):
            labels[layers[segment.get("layer", 0)] == segment.get("labelValue", 1)] = organ.label
            matched = True
    if not matched:
        names = ", ".join(repr(segment.get("name", "")) for segment in segmentation.get("segments", [])) or "none"
        raise AbdoSegError(f"{path} has no segment that matches an AbdoSeg organ by terminology or by name (its segments: {names}).")
    return Image(labels, LPS_TO_RAS @ np.asarray(segmentation["ijkToLPS"], dtype=np.float64))


def _matching_segments(segmentation: dict, organ: Organ) -> list[dict]:
    """The segments that are ``organ``: by terminology (type and modifier codes), else by name (``organ_from_name``)."""
    by_terminology = segments_from_terminology(segmentation, organ.terminology)
    if by_terminology:
        return by_terminology
    return [segment for segment in segmentation.get("segments", []) if organ_from_name(segment.get("name", "")) == organ]


def _some(ids: list[int], most: int = 8) -> str:
    """'1, 2, 3' or '1, 2, ... (12 ids)'."""
    shown = ", ".join(str(i) for i in ids[:most])
    return shown if len(ids) <= most else f"{shown}, ... ({len(ids)} ids)"
