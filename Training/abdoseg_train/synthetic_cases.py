"""Synthetic CT written as AbdoSeg case folders: to look at, or to train on like real cases."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from AbdoSegLib.image import Image
from AbdoSegLib.io.atomic import atomic_directory, foreign_entries, lacks_record
from AbdoSegLib.io.image_files import write_image
from AbdoSegLib.organs import ORGANS

from .anatomy import AnatomyCase
from .colon import add_colon
from .distractors import add_distractors
from .organ_size import scale_organ
from .renal_sinus import add_renal_pelvis
from .synthetic import synthesise

CT_FILE, LABEL_FILE, INFO_FILE = CASE_FILES = ("ct.nii.gz", "label.nii.gz", "case.json")


@dataclass(frozen=True)
class AnatomyVariation:
    """Probabilities, per scan, of distractors beside the organs and lesions inside them (``distractors``), of one organ
    grown or shrunk (``organ_size``), of a colon beside the kidneys of a map without bowel (``colon``) and, per kidney, of
    urine in its sinus (``renal_sinus``): what training draws into its synthetic patches. All 0: the map as it is."""

    distractor_probability: float = 0.0
    lesion_probability: float = 0.0
    organ_scaling_probability: float = 0.0
    colon_probability: float = 0.0
    renal_pelvis_probability: float = 0.0


def write_synthetic_case(anatomy: AnatomyCase, folder: Path, phase: str, rng: np.random.Generator, overwrite: bool = False,
                         keep: Iterable[Path] = (), variation: AnatomyVariation = AnatomyVariation()) -> None:
    """Paint one synthetic CT of ``anatomy`` in ``phase`` into ``folder``.

    The folder gets ``ct.nii.gz`` (int16 HU on the anatomy's model grid), ``label.nii.gz`` (the
    anatomy's organ labels, as ``variation`` changed them) and ``case.json`` (the organs labelled, the phase and the
    source map), all or nothing. ``overwrite`` replaces only a folder that this function wrote
    (``not_a_synthetic_case``), never one holding a path of ``keep`` (the anatomy map's files).
    """
    spacing = float(np.linalg.norm(anatomy.affine[:3, 0]))
    structures, labels = scale_organ(anatomy.structures, anatomy.labels, rng, variation.organ_scaling_probability)
    structures = add_distractors(structures, labels, spacing, rng, variation.distractor_probability, variation.lesion_probability)
    structures = add_colon(structures, labels, spacing, rng, variation.colon_probability)
    structures = add_renal_pelvis(structures, spacing, rng, variation.renal_pelvis_probability)
    hu = synthesise(structures, anatomy.depth_mm, spacing, rng, phase=phase, random_phase=0.0)
    info = {"labelled": [organ.name for organ in ORGANS if organ.label in anatomy.labelled],
            "synthetic": {"anatomy": anatomy.name, "phase": phase, "variation": asdict(variation)}}
    with atomic_directory(folder, overwrite=overwrite, foreign=not_a_synthetic_case, keep=keep) as staging:
        write_image(Image(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), anatomy.affine), staging / CT_FILE)
        write_image(Image(labels, anatomy.affine), staging / LABEL_FILE)
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def not_a_synthetic_case(folder: Path) -> str | None:
    """Why ``folder`` is not a case folder of ``write_synthetic_case`` (a phrase), or None when it is: only its
    files, among them a case.json that names the synthetic source."""
    return foreign_entries(folder, lambda entry: entry.name in CASE_FILES, "abdoseg-train synth") or \
        lacks_record(folder / INFO_FILE, "synthetic", "abdoseg-train synth")
