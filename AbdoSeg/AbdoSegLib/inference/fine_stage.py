"""The second stage of a two-stage bundle: each organ the first stage found, refined in a crop around it.

For each organ that the fine stage refines (``FineStage.organs``) and that the first stage found
(``presence.py``; an organ not found gets no second pass and stays undrawn):

1. Crop: the box of input voxels outside which the first stage never places the organ (``upsampling``),
   widened by ``crop_margin_mm`` on each side and clipped to the scan (an organ cut by the scan's edge
   gets a crop that ends there).
2. The crop is resampled to the fine spacing in canonical (RAS) voxel order with the first stage's HU
   window (``preprocess``); with ``coarse_channel`` the first stage's probability of the organ,
   interpolated onto the fine grid and scaled to [-1, 1] as the CT is, is a second input channel.
3. The fine network runs over it (sliding windows of its patch, never shrunk: a crop smaller than the patch is
   padded to it, as its training patches were). Where the crop ends at the scan's edge, a piece it labels as
   another organ and that touches that face is the organ's where the first stage says so (``name_cut_pieces``:
   a sliver cut by the scan's face, which the crop alone cannot name). Its labels are cleaned up (``cleanup``)
   on the fine grid.
4. The organ's margin p_organ - max(p_other) comes back onto the input voxels of the crop, as the first
   stage's does (``upsampling.organ_margin``): no full-resolution multi-class volume is built.

The result replaces the organ's first-stage labels (all of which lie inside its crop). Every voxel is
decided as in ``upsampling``: the highest margin above 0 wins, so where crops overlap the organ with the
higher fine margin takes a voxel, and an organ that is not refined keeps a voxel unless a refined organ's
fine margin beats its first-stage margin there. A fine stage that draws nothing of the organ in its crop
(on the input grid) leaves the first stage's labels of that organ as they are: the second stage refines,
it does not remove an organ that the first one found (though another refined organ's higher fine margins
may, in principle, take all of its voxels).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from ..image import Image
from ..model.bundle import FineStage
from ..model.preprocessing import ModelGrid, Preprocessing, canonical, hounsfield, preprocess
from ..organs import BACKGROUND, ORGANS
from ..progress import NoProgress, Progress
from .cleanup import clean_labels, winning_class
from .presence import OrganPresence
from .upsampling import Box, lerp_axis, organ_margin, place


def refine(
    image: Image,
    labels: np.ndarray,
    score: np.ndarray,
    boxes: dict[int, Box],
    presence: dict[str, OrganPresence],
    coarse: tuple[torch.Tensor, ModelGrid],
    fine: FineStage,
    hu_window: tuple[float, float],
    infer: Callable[[torch.Tensor], torch.Tensor],
    progress: Progress = NoProgress(),
) -> list[str]:
    """Refine the organs found, in place, and return the names of those the fine stage drew.

    labels, score, boxes: ``upsampling.canonical_labels`` of the first stage (canonical voxel order of
    ``image``); coarse: the first stage's (C, X, Y, Z) probabilities and its ModelGrid; infer: the fine
    network's probabilities (C, X', Y', Z') of a normalised input (K, X', Y', Z') on a fine grid.
    """
    array, affine, _ = canonical(image)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    spec = Preprocessing(fine.spacing_mm, hu_window)
    organs = [organ for organ in ORGANS if organ.name in fine.organs and presence[organ.name].found]
    results = []
    for index, organ in enumerate(organs):
        progress("postprocess", 0.5 * index / len(organs), f"refining the {organ.title.lower()} at {min(fine.spacing_mm):g} mm")
        box = crop_box(boxes[organ.label], fine.crop_margin_mm, spacing, labels.shape)
        start = np.array([s.start for s in box])
        moved = affine.copy()
        moved[:3, 3] += affine[:3, :3] @ start
        volume, grid = preprocess(Image(array[box], moved), spec)
        open_faces = [(axis, side) for axis, s in enumerate(box) for side, at_edge in enumerate((s.start == 0, s.stop == labels.shape[axis])) if at_edge]
        first_stage = coarse_probability(coarse[0][organ.label], coarse[1], grid, start) if fine.coarse_channel or open_faces else None
        channels = [volume, prior_channel(first_stage)] if fine.coarse_channel else [volume]
        probabilities = infer(torch.stack(channels))
        fine_labels = winning_class(probabilities)
        if open_faces:
            fine_labels = name_cut_pieces(fine_labels, first_stage.numpy() > 0.5, organ.label, open_faces)
        mask = clean_labels(fine_labels, hounsfield(volume, hu_window)) == organ.label
        if not mask.any():
            continue
        target, value = organ_margin(probabilities, mask, organ.label, grid)
        if (value > 0).any():  # a fine voxel or two may cover no input voxel's centre
            results.append((organ, tuple(slice(s.start + a, s.stop + a) for s, a in zip(target, start)), value))
    for organ, _, _ in results:
        old = boxes[organ.label]
        erased = labels[old] == organ.label
        labels[old][erased] = 0
        score[old][erased] = 0
    for organ, target, value in results:
        place(labels, score, target, value, organ.label)
    return [organ.name for organ, _, _ in results]


def crop_box(box: Box, margin_mm: float, spacing: np.ndarray, shape: tuple[int, int, int]) -> Box:
    """``box`` (slices of voxel indices) widened by ``margin_mm`` on each side (whole voxels of ``spacing``, mm,
    rounded up) and clipped to an array of ``shape``."""
    widen = np.ceil(margin_mm / spacing).astype(int)
    return tuple(slice(max(s.start - w, 0), min(s.stop + w, n)) for s, w, n in zip(box, widen, shape))


def coarse_probability(probability: torch.Tensor, coarse_grid: ModelGrid, grid: ModelGrid, start: np.ndarray) -> torch.Tensor:
    """The first stage's probability of an organ, (X, Y, Z) on ``coarse_grid``, interpolated onto the fine ``grid``
    of a crop whose first voxel is canonical input index ``start``."""
    value = probability
    for axis in range(3):
        canonical_index = grid.canonical_coordinates(axis, np.arange(grid.shape[axis])) + start[axis]
        value = lerp_axis(value, axis, coarse_grid.model_coordinates(axis, canonical_index))
    return value


def name_cut_pieces(labels: np.ndarray, named: np.ndarray, organ: int, open_faces: list[tuple[int, int]]) -> np.ndarray:
    """``labels`` (X, Y, Z) uint8 of the organ's crop, where each 26-connected piece labelled as another organ that
    touches one of ``open_faces`` ((axis, 0 for its first slice or 1 for its last): where the scan ends) takes the
    label ``organ`` in the voxels of ``named`` ((X, Y, Z) bool: where the first stage says the organ). A new array.

    The second stage sees only the crop: of a kidney's pole or the spleen's tip cut by the scan's face it may see
    too little to tell which organ the sliver is, which the first stage, seeing the whole scan, can.
    """
    pieces, _ = ndimage.label((labels != BACKGROUND) & (labels != organ), structure=np.ones((3, 3, 3), dtype=bool))
    touching = {int(piece) for axis, side in open_faces for piece in np.unique(np.take(pieces, -side, axis=axis)) if piece}
    renamed = labels.copy()
    renamed[np.isin(pieces, sorted(touching)) & named] = organ
    return renamed


def prior_channel(probability):
    """A probability (array or tensor, values in [0, 1]) scaled to [-1, 1] as the CT channel is: the second input
    of a second stage with ``coarse_channel``, at inference and in training."""
    return probability * 2 - 1
