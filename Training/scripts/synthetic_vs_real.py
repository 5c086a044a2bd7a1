"""Picture for the model card: real CT next to synthetic CT painted from real anatomy.

    python Training/scripts/synthetic_vs_real.py REAL_CASE ANATOMY_MAP OUT.png [--seed N]

Rows: an axial and a coronal slice through the kidneys' centre. Columns: the real case, then
the anatomy map painted in each contrast phase (``abdoseg_train.synthetic``). Everything on
the model grid (3 mm), shown with a soft-tissue window (W 400, L 50), radiological
convention (the patient's right on the left of the picture).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image as Picture
from PIL import ImageDraw

from abdoseg_train.anatomy import discover_anatomy, load_anatomy
from abdoseg_train.cases import discover_cases
from abdoseg_train.config import TrainConfig
from abdoseg_train.prepared import prepare
from abdoseg_train.synthetic import PHASES, synthesise
from AbdoSegLib.model.preprocessing import Preprocessing

WINDOW_HU = (-150.0, 250.0)
PANEL = 220  # pixels
CAPTION = 18


def views(hu: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Axial and coronal (rows, columns) slices of an (X, Y, Z) RAS volume through the kidneys' centre."""
    x, y, z = np.rint(np.argwhere((labels == 2) | (labels == 3)).mean(axis=0)).astype(int)
    return [hu[::-1, ::-1, z].T, hu[::-1, y, ::-1].T]


def panel(slice_hu: np.ndarray) -> Picture.Image:
    low, high = WINDOW_HU
    grey = (np.clip((slice_hu - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    picture = Picture.fromarray(np.ascontiguousarray(grey))
    scale = PANEL / max(picture.size)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Picture.BILINEAR)
    square = Picture.new("L", (PANEL, PANEL))
    square.paste(picture, ((PANEL - picture.width) // 2, (PANEL - picture.height) // 2))
    return square


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real", type=Path, help="a labelled real case folder")
    parser.add_argument("anatomy", type=Path, help="an anatomy map (*_anatomy.nii.gz)")
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = TrainConfig()
    spec = Preprocessing(config.spacing_mm, WINDOW_HU)
    real = prepare(discover_cases(args.real)[0], spec)
    low, high = WINDOW_HU  # the prepared image is normalised to [-1, 1] over this window
    columns = [(f"real: {real.name}", views(real.image.numpy() * (high - low) / 2 + (high + low) / 2, real.labels.numpy()))]
    anatomy = load_anatomy(discover_anatomy(args.anatomy)[0], spec)
    rng = np.random.default_rng(args.seed)
    for phase in PHASES:
        hu = synthesise(anatomy.structures, anatomy.depth_mm, config.spacing_mm[0], rng, phase=phase, random_phase=0.0)
        columns.append((f"synthetic: {phase.replace('_', '-')}", views(hu, anatomy.labels)))
    sheet = Picture.new("L", (PANEL * len(columns), CAPTION + 2 * PANEL), color=0)
    draw = ImageDraw.Draw(sheet)
    for column, (title, slices) in enumerate(columns):
        draw.text((column * PANEL + 6, 3), title, fill=255)
        for row, slice_hu in enumerate(slices):
            sheet.paste(panel(slice_hu), (column * PANEL, CAPTION + row * PANEL))
    sheet.save(args.output)


if __name__ == "__main__":
    main()
