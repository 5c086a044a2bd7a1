"""Training cases from the dataset layouts people have, with labels mapped to AbdoSeg ids.

A Case knows its CT and how to build its label map in AbdoSeg ids (0 background, 1 liver,
2 right kidney, 3 left kidney, 4 spleen): either one label map plus an id mapping, or one
mask file per organ. ``labelled`` lists the organs the source really labels; in a partially
labelled case a 0 inside another organ means "unknown", not background.

Layouts (``discover_cases``):
- AbdoSeg case folders: ``case.json`` ({"labelled": [organ names]}), ``ct.nii.gz`` (or
  ``ct.nrrd`` or a ``dicom/`` folder) and ``label.nii.gz`` in AbdoSeg ids;
- nnU-Net / Medical Segmentation Decathlon: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/``
  (ids mapped from the label names in dataset.json, or by ``mapping``);
- TotalSegmentator subjects: ``ct.nii.gz`` + ``segmentations/liver.nii.gz`` etc.;
- 3D-IRCADb patients: ``PATIENT_DICOM/`` + ``MASKS_DICOM/<organ>/`` DICOM masks;
- a folder with ``images/`` and ``labels/`` holding files of the same names (needs ``mapping``
  unless the labels already use AbdoSeg ids).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.image import Image
from AbdoSegLib.io.image_files import read_image
from AbdoSegLib.io.labelmaps import read_labels
from AbdoSegLib.organs import ORGAN_NAMES, ORGANS, organ_by_name, organ_from_name

CT_NAMES = ("ct.nii.gz", "ct.nii", "ct.nrrd", "dicom")
LABEL_NAMES = ("label.nii.gz", "label.nii", "label.nrrd")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")

# Per-structure mask names of the public datasets, by organ.
TOTALSEGMENTATOR_MASKS = {"liver": "liver", "right_kidney": "kidney_right", "left_kidney": "kidney_left", "spleen": "spleen"}
IRCAD_MASKS = {"liver": ("liver",), "right_kidney": ("rightkidney", "kidneyright"), "left_kidney": ("leftkidney", "kidneyleft"), "spleen": ("spleen",)}

ALL_ORGANS = tuple(organ.label for organ in ORGANS)


@dataclass(frozen=True)
class Case:
    """name: unique id; image: CT file or DICOM folder; labelled: organ ids really labelled.

    Labels come from ``labels`` (one map in AbdoSeg ids, or translated by ``mapping``
    {theirs: ours} with other ids -> 0) or from ``masks`` {our id: mask file or DICOM folder}.
    """

    name: str
    image: Path
    labelled: tuple[int, ...]
    labels: Path | None = None
    mapping: dict[int, int] | None = None
    masks: dict[int, Path] = field(default_factory=dict)

    def load_labels(self) -> Image:
        """The label map in AbdoSeg ids (uint8), on the grid of its source files."""
        if self.masks:
            first = None
            for label, path in sorted(self.masks.items()):
                mask = read_image(path)
                if first is None:
                    first = mask.with_array(np.zeros(mask.shape, dtype=np.uint8))
                elif not mask.same_grid(first):
                    raise AbdoSegError(f"case {self.name}: the mask {path} is not on the grid of the other masks.")
                first.array[np.asarray(mask.array) > 0] = label
            return first
        try:
            return read_labels(self.labels, self.mapping, require_match=False)
        except AbdoSegError as error:
            raise AbdoSegError(f"case {self.name}: {error}") from None


def discover_cases(root: Path, mapping: dict[int, int] | None = None) -> list[Case]:
    """Every case under ``root`` in any of the layouts above; ``mapping`` overrides label ids."""
    root = Path(root)
    if not root.is_dir():
        raise AbdoSegError(f"{root} is not a folder of training cases.")
    if (root / "case.json").is_file():
        return [case_from_folder(root)]
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return nnunet_cases(root, mapping)
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return paired_cases(root, mapping)
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / "case.json").is_file():
            cases.append(case_from_folder(folder))
        elif (folder / "segmentations").is_dir():
            cases.append(totalsegmentator_case(folder))
        elif (folder / "PATIENT_DICOM").is_dir():
            cases.append(ircad_case(folder))
    if not cases:
        raise AbdoSegError(f"{root} holds no training cases (case folders, an nnU-Net/Decathlon dataset, "
                           "TotalSegmentator or 3D-IRCADb subjects, or images/ + labels/).")
    return cases


def case_from_folder(folder: Path) -> Case:
    """An AbdoSeg case folder (see the module docstring)."""
    info_path = folder / "case.json"
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as error:
        raise AbdoSegError(f"case {folder.name}: case.json is not valid JSON ({error}).") from None
    try:
        labelled = tuple(sorted(organ_by_name(name).label for name in info.get("labelled", ORGAN_NAMES)))
    except KeyError as error:
        raise AbdoSegError(f"case {folder.name}: case.json names an unknown organ ({error.args[0]}).") from None
    return Case(folder.name, _first_existing(folder, CT_NAMES, "CT"), labelled, labels=_first_existing(folder, LABEL_NAMES, "label map"))


def nnunet_cases(root: Path, mapping: dict[int, int] | None) -> list[Case]:
    """nnU-Net v2 (``CASE_0000.nii.gz``, labels {name: id}) or Decathlon (``CASE.nii.gz``, labels {id: name})."""
    return _paired_folders(root / "imagesTr", root / "labelsTr", mapping or _mapping_from_dataset_json(root))


def paired_cases(root: Path, mapping: dict[int, int] | None) -> list[Case]:
    """``images/X`` (or ``X_0000``) with ``labels/X``: FLARE22's own layout, among others."""
    return _paired_folders(root / "images", root / "labels", mapping)


def _paired_folders(images: Path, labels: Path, mapping: dict[int, int] | None) -> list[Case]:
    """One case per label map, with the image of the same name or of the name + ``_0000``."""
    labelled = tuple(sorted(set(mapping.values()) - {0})) if mapping else ALL_ORGANS
    by_stem = {_stem(p): p for p in _images_in(images)}
    cases = []
    for label_path in sorted(_images_in(labels)):
        stem = _stem(label_path)
        image = by_stem.get(f"{stem}_0000", by_stem.get(stem))
        if image is None:
            raise AbdoSegError(f"case {stem}: {labels.name}/ has it but {images.name}/ has no {stem}_0000 or {stem} image.")
        cases.append(Case(stem, image, labelled, labels=label_path, mapping=mapping))
    if not cases:
        raise AbdoSegError(f"{labels} holds no label maps.")
    return cases


def totalsegmentator_case(folder: Path) -> Case:
    """A TotalSegmentator subject: ct.nii.gz + segmentations/<structure>.nii.gz."""
    masks = {}
    for organ_name, structure in TOTALSEGMENTATOR_MASKS.items():
        path = folder / "segmentations" / f"{structure}.nii.gz"
        if path.exists():
            masks[organ_by_name(organ_name).label] = path
    if not masks:
        raise AbdoSegError(f"case {folder.name}: segmentations/ has none of {', '.join(TOTALSEGMENTATOR_MASKS.values())}.")
    return Case(folder.name, _first_existing(folder, CT_NAMES, "CT"), tuple(sorted(masks)), masks=masks)


def ircad_case(folder: Path) -> Case:
    """A 3D-IRCADb patient: PATIENT_DICOM/ + MASKS_DICOM/<organ>/ (only the masks present are labelled)."""
    masks = {}
    for organ_name, names in IRCAD_MASKS.items():
        path = next((folder / "MASKS_DICOM" / n for n in names if (folder / "MASKS_DICOM" / n).is_dir()), None)
        if path is not None:
            masks[organ_by_name(organ_name).label] = path
    if not masks:
        raise AbdoSegError(f"case {folder.name}: MASKS_DICOM/ has no liver, kidney or spleen mask.")
    return Case(folder.name, folder / "PATIENT_DICOM", tuple(sorted(masks)), masks=masks)


def _mapping_from_dataset_json(root: Path) -> dict[int, int]:
    try:
        labels = json.loads((root / "dataset.json").read_text())["labels"]
    except (OSError, json.JSONDecodeError, KeyError):
        raise AbdoSegError(f"{root}: dataset.json is missing or has no 'labels'; give the label mapping (--map).") from None
    pairs = [(int(v), k) for k, v in labels.items()] if all(str(v).isdigit() for v in labels.values()) else [(int(k), v) for k, v in labels.items()]
    mapping = {}
    for their_id, name in pairs:
        organ = organ_from_name(str(name))
        if organ is not None:
            mapping[their_id] = organ.label
    if not mapping:
        raise AbdoSegError(f"{root}: none of the labels in dataset.json ({', '.join(str(n) for _, n in pairs)}) is an AbdoSeg organ; give --map.")
    return mapping


def _images_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES)]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _first_existing(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).exists():
            return folder / name
    raise AbdoSegError(f"case {folder.name} has no {what} (looked for {', '.join(names)}).")
