"""Validation during training: per-organ Dice and HD95 on held-out cases, with the engine's metrics.

Each case is segmented on the model grid exactly as inference does it (sliding window,
clean-up) and compared there, only for the organs the case really labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from AbdoSegLib.analysis.metrics import compare_labelmaps
from AbdoSegLib.image import Image
from AbdoSegLib.inference.predict import cleaned_labels, infer_probabilities, window_size
from AbdoSegLib.model.bundle import DEFAULT_OVERLAP
from AbdoSegLib.model.preprocessing import hounsfield
from AbdoSegLib.model.vnet import VNet
from AbdoSegLib.organs import ORGANS

from .prepared import PreparedCase

REPORTED = ("dice", "hd95")


@dataclass
class ValidationResult:
    """per_case: {case: {organ: {"dice", "hd95"}}} for the organs each case labels."""

    per_case: dict[str, dict[str, dict[str, float | None]]]

    def mean(self, metric: str) -> dict[str, float | None]:
        """Mean of ``metric`` per organ over the cases that label it.

        A distance that is infinite (organ missed) makes the organ's mean None.
        """
        means = {}
        for organ in ORGANS:
            values = [scores[organ.name][metric] for scores in self.per_case.values() if organ.name in scores]
            if values:
                finite = all(v is not None and math.isfinite(v) for v in values)
                means[organ.name] = round(float(np.mean(values)), 4) if finite else None
        return means

    @property
    def mean_dice(self) -> float | None:
        values = [v for v in self.mean("dice").values() if v is not None]
        return round(float(np.mean(values)), 4) if values else None

    def summary(self) -> dict:
        return {"dice": self.mean("dice"), "hd95_mm": self.mean("hd95"), "mean_dice": self.mean_dice, "per_case": self.per_case}

    def flat(self) -> dict[str, float]:
        """Scalars for the CSV / TensorBoard log: dice/<organ>, hd95/<organ>, mean_dice."""
        row = {f"{metric}/{organ}": value for metric in REPORTED for organ, value in self.mean(metric).items() if value is not None}
        if self.mean_dice is not None:
            row["mean_dice"] = self.mean_dice
        return row


def validate(network: VNet, cases: list[PreparedCase], inference_patch: tuple[int, int, int], hu_window: tuple[float, float],
             device: torch.device) -> ValidationResult:
    """Segment each case on its model grid and compare with its labels (labelled organs only).

    hu_window: the window the cases' images were normalised with (the clean-up needs HU).
    """
    network.eval()
    per_case = {}
    for case in cases:
        roi = window_size(tuple(case.image.shape), inference_patch, network.config.divisor)
        probabilities = infer_probabilities(network, case.image, roi, DEFAULT_OVERLAP, device)
        predicted = cleaned_labels(probabilities, hounsfield(case.image, hu_window))
        metrics = compare_labelmaps(Image(predicted, case.affine), Image(case.labels.numpy(), case.affine))
        per_case[case.name] = {
            organ.name: {metric: _plain(metrics[organ.name][metric]) for metric in REPORTED}
            for organ in ORGANS if organ.label in case.labelled
        }
    network.train()
    return ValidationResult(per_case)


def _plain(value) -> float | None:
    """JSON-safe: an infinite distance (organ missed) is kept as float('inf') only in memory."""
    return None if value is None else round(float(value), 4)
