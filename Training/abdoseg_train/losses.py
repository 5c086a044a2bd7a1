"""Dice + cross-entropy that respects partial labels.

In a case that labels only some organs, a voxel marked 0 may be background or any organ
that was not labelled. The "marginal" treatment: the probabilities of the unlabelled organs
are added to the background's before the loss, so predicting an unlabelled organ there
costs nothing, and the unlabelled organs get no Dice term of their own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from AbdoSegLib.organs import NUM_CLASSES


def class_mask(labelled: list[tuple[int, ...]], device: torch.device | None = None) -> torch.Tensor:
    """(N, C) bool: True for background and each labelled organ of each case."""
    mask = torch.zeros(len(labelled), NUM_CLASSES, dtype=torch.bool, device=device)
    mask[:, 0] = True
    for row, labels in enumerate(labelled):
        mask[row, list(labels)] = True
    return mask


def marginal_probabilities(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax with each case's unlabelled organ channels merged into background.

    logits: (N, C, X, Y, Z); mask: (N, C) bool. Returns (N, C, X, Y, Z) probabilities whose
    unlabelled channels are 0.
    """
    probabilities = torch.softmax(logits.float(), dim=1)
    keep = mask[:, :, None, None, None].to(probabilities.dtype)
    unlabelled_mass = (probabilities * (1 - keep)).sum(dim=1)
    merged = probabilities * keep
    merged[:, 0] = merged[:, 0] + unlabelled_mass
    return merged


def partial_dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, ce_weight: float = 1.0, smooth: float = 1e-5) -> torch.Tensor:
    """Mean soft Dice loss over the labelled organs present in the batch + ``ce_weight`` x CE.

    logits: (N, C, X, Y, Z); labels: (N, X, Y, Z) int64 (0 = background or unknown);
    mask: (N, C) bool from class_mask.
    """
    probabilities = marginal_probabilities(logits, mask)
    one_hot = F.one_hot(labels, NUM_CLASSES).permute(0, 4, 1, 2, 3).to(probabilities.dtype)
    dims = (2, 3, 4)
    intersection = (probabilities * one_hot).sum(dims)
    denominator = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    organ_terms = mask[:, 1:]
    dice_loss = (1 - dice[:, 1:])[organ_terms].mean() if organ_terms.any() else probabilities.sum() * 0
    cross_entropy = F.nll_loss(torch.log(probabilities.clamp_min(1e-7)), labels)
    return dice_loss + ce_weight * cross_entropy
