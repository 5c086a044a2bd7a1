"""Training patches and their augmentation.

Arrays are in canonical RAS voxel order, so axis 0 runs from the patient's left to the
patient's right: mirroring it turns a right kidney into a left one, and the labels swap.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import RandAffined

from AbdoSegLib.organs import LEFT_RIGHT_PAIRS
from AbdoSegLib.predict import PAD_VALUE

from .prepared import PreparedCase

LEFT_RIGHT_AXIS = 0


def flip_left_right(image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror (X, Y, Z) image and labels across the sagittal plane; swap right/left labels."""
    image = image.flip(LEFT_RIGHT_AXIS)
    labels = labels.flip(LEFT_RIGHT_AXIS)
    swapped = labels.clone()
    for right, left in LEFT_RIGHT_PAIRS:
        swapped[labels == right] = left
        swapped[labels == left] = right
    return image, swapped


def swap_labelled(labelled: tuple[int, ...]) -> tuple[int, ...]:
    """The labelled organ ids after a left-right flip."""
    mapping = {}
    for right, left in LEFT_RIGHT_PAIRS:
        mapping[right], mapping[left] = left, right
    return tuple(sorted(mapping.get(label, label) for label in labelled))


def random_crop(case: PreparedCase, size: tuple[int, int, int], rng: np.random.Generator, foreground_fraction: float = 0.67) -> tuple[torch.Tensor, torch.Tensor]:
    """A (size) crop of image and labels, padded where the volume is smaller.

    With probability ``foreground_fraction`` the crop is centred on a voxel of one labelled organ,
    the organ drawn uniformly among those present, so that small organs (kidneys) are as often
    in the centre as the liver.
    Padding: image PAD_VALUE (the bottom of the HU window, as at inference), labels 0.
    """
    shape = np.array(case.image.shape)
    centre = None
    present = [label for label in case.labelled if label in case.organ_labels]
    if present and rng.random() < foreground_fraction:
        organ_voxels = torch.nonzero(case.labels == present[rng.integers(len(present))])
        centre = organ_voxels[rng.integers(len(organ_voxels))].numpy()
    if centre is None:
        centre = np.array([rng.integers(n) for n in shape])
    start = centre - np.array(size) // 2
    image = torch.full(size, PAD_VALUE)
    labels = torch.zeros(size, dtype=torch.uint8)
    source = tuple(slice(max(s, 0), min(s + n, m)) for s, n, m in zip(start, size, shape))
    target = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(source, start))
    image[target] = case.image[source]
    labels[target] = case.labels[source]
    return image, labels


class Augmenter:
    """Random crop, flip (with label swap), rotation and scaling, intensity and noise.

    patch: output size (X, Y, Z); crops are taken 25 % larger so that rotation and
    scaling do not bring in empty corners.
    """

    def __init__(self, patch: tuple[int, int, int], seed: int, rotate_deg: float = 15.0, scale: float = 0.15):
        self.patch = tuple(patch)
        self.crop = tuple(int(round(n * 1.25)) for n in patch)
        self.rng = np.random.default_rng(seed)
        radians = np.deg2rad(rotate_deg)
        self.affine = RandAffined(
            keys=("image", "labels"), prob=0.8, spatial_size=self.patch, rotate_range=(radians,) * 3,
            scale_range=(scale,) * 3, mode=("bilinear", "nearest"), padding_mode="border",
        )
        self.affine.set_random_state(seed=seed)

    def __call__(self, case: PreparedCase) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """-> image (1, X, Y, Z) float32, labels (X, Y, Z) int64, labelled organ ids."""
        image, labels = random_crop(case, self.crop, self.rng)
        labelled = case.labelled
        if self.rng.random() < 0.5:
            image, labels = flip_left_right(image, labels)
            labelled = swap_labelled(labelled)
        sample = self.affine({"image": image[None], "labels": labels[None].float()})
        image, labels = torch.as_tensor(sample["image"]), torch.as_tensor(sample["labels"])[0].round().long()
        # Intensity: contrast and brightness changes, then noise, in the normalised units.
        image = image * float(self.rng.uniform(0.9, 1.1)) + float(self.rng.uniform(-0.1, 0.1))
        image = image + torch.from_numpy(self.rng.normal(0, self.rng.uniform(0, 0.05), image.shape).astype(np.float32))
        return image.float(), labels, labelled
