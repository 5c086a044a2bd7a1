"""Synthetic CT written as AbdoSeg case folders: to look at, or to train on like real cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from AbdoSegLib.image import Image
from AbdoSegLib.io.atomic import atomic_directory
from AbdoSegLib.io.image_files import write_image
from AbdoSegLib.organs import ORGANS

from .anatomy import AnatomyCase
from .synthetic import synthesise


def write_synthetic_case(anatomy: AnatomyCase, folder: Path, phase: str, rng: np.random.Generator, overwrite: bool = False) -> None:
    """Paint one synthetic CT of ``anatomy`` in ``phase`` into ``folder``.

    The folder gets ``ct.nii.gz`` (int16 HU on the anatomy's model grid), ``label.nii.gz`` (the
    anatomy's organ labels, unchanged) and ``case.json`` (the organs labelled, the phase and the
    source map), all or nothing.
    """
    spacing = float(np.linalg.norm(anatomy.affine[:3, 0]))
    hu = synthesise(anatomy.structures, anatomy.depth_mm, spacing, rng, phase=phase, random_phase=0.0)
    info = {"labelled": [organ.name for organ in ORGANS if organ.label in anatomy.labelled],
            "synthetic": {"anatomy": anatomy.name, "phase": phase}}
    with atomic_directory(folder, overwrite=overwrite) as staging:
        write_image(Image(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), anatomy.affine), staging / "ct.nii.gz")
        write_image(Image(anatomy.labels, anatomy.affine), staging / "label.nii.gz")
        (staging / "case.json").write_text(json.dumps(info, indent=2) + "\n")
