"""Training patches and their augmentation.

Arrays are in canonical RAS voxel order, so axis 0 runs from the patient's left to the
patient's right: mirroring it turns a right kidney into a left one, and the labels swap.
"""

from __future__ import annotations

import numpy as np
import torch

from AbdoSegLib.model.preprocessing import PAD_VALUE, Preprocessing, normalise
from AbdoSegLib.organs import LEFT_RIGHT_PAIRS

from .anatomy import AnatomyCase
from .colon import COLON_PROBABILITY, add_colon
from .distractors import DISTRACTOR_PROBABILITY, LESION_PROBABILITY, add_distractors
from .draw import NO_ORGAN
from .negatives import NegativeCentres
from .organ_size import ORGAN_SCALING_PROBABILITY, scale_organ
from .prepared import PreparedCase
from .renal_sinus import RENAL_PELVIS_PROBABILITY, add_renal_pelvis
from .synthetic import synthesise

LEFT_RIGHT_AXIS = 0
SYNTHETIC_MAPS = ("structures", "labels", "depth_mm")
FOREGROUND_FRACTION = 0.67  # of crops centred on an organ voxel
FIELD_OF_VIEW_PROBABILITY = 0.3  # of a patch in which the scan ends
THROUGH_ORGAN_PROBABILITY = 0.5  # of a scan end placed where the patch holds an organ


def flip_left_right(image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror (X, Y, Z) image and labels across the sagittal plane; swap right/left labels."""
    image = image.flip(LEFT_RIGHT_AXIS)
    labels = labels.flip(LEFT_RIGHT_AXIS)
    swapped = labels.clone()
    for right, left in LEFT_RIGHT_PAIRS:
        swapped[labels == right] = left
        swapped[labels == left] = right
    return image, swapped


def mirrored(label: int) -> int:
    """An organ id after a left-right flip (the other kidney's; any other organ's own)."""
    for right, left in LEFT_RIGHT_PAIRS:
        if label in (right, left):
            return left if label == right else right
    return label


def swap_labelled(labelled: tuple[int, ...]) -> tuple[int, ...]:
    """The labelled organ ids after a left-right flip."""
    return tuple(sorted(mirrored(label) for label in labelled))


def cut_field_of_view(image: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A scan that ends inside the patch: beyond its end the image is PAD_VALUE (the bottom of
    the HU window, what inference pads a scan with) and the labels are 0.

    image (1, X, Y, Z), labels (X, Y, Z), RAS voxel order. Two times in three the scan range
    ends at an axial plane below, above or on both sides (a slab); else the patch is cut by a
    reconstruction circle about the Z axis that keeps 10-90 % of it. Each end passes through an
    organ with probability ``THROUGH_ORGAN_PROBABILITY`` where the patch holds one there, so that
    organs cut by the edge of a scan (a kidney's lower pole at the top of the scan) are common.
    """
    nx, ny, nz = labels.shape
    if rng.random() < 2 / 3:
        # A plane at slice z keeps z and up (or below z): it cuts an organ for z past its lowest slice.
        organ_slices = torch.nonzero(labels.amax(dim=(0, 1)) > 0)[1:, 0].numpy()
        inside = torch.zeros(nz, dtype=torch.bool)
        side = rng.integers(3)  # 0: bottom, 1: top, 2: both
        low = _plane(organ_slices, 1, nz // 2, rng) if side != 1 else 0
        high = _plane(organ_slices, nz // 2, nz, rng) if side != 0 else nz
        inside[low:high] = True
        inside = inside.expand(nx, ny, nz)
    else:
        # A centre in or around the patch; the radius keeps 10-90 % of the patch's columns.
        centre = rng.uniform(-0.5, 1.5, 2) * (nx, ny)
        x, y = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
        distance = np.hypot(x - centre[0], y - centre[1])
        kept = rng.uniform(0.1, 0.9)
        organ_columns = (labels.amax(dim=2) > 0).numpy()
        if organ_columns.any() and rng.random() < THROUGH_ORGAN_PROBABILITY:
            radius = rng.choice(distance[organ_columns])
            kept = float(np.clip((distance <= radius).mean(), 0.1, 0.9))
        disc = torch.from_numpy(distance <= np.quantile(distance, kept))
        inside = disc[..., None].expand(nx, ny, nz)
    return image.masked_fill(~inside, PAD_VALUE), labels.masked_fill(~inside, 0)


def _plane(organ_slices: np.ndarray, low: int, high: int, rng: np.random.Generator) -> int:
    """An axial slice index in [low, high): one of ``organ_slices`` (slices where a plane cuts an organ) with
    probability ``THROUGH_ORGAN_PROBABILITY`` where some lie in that range, else any."""
    candidates = organ_slices[(organ_slices >= low) & (organ_slices < high)]
    if len(candidates) and rng.random() < THROUGH_ORGAN_PROBABILITY:
        return int(rng.choice(candidates))
    return int(rng.integers(low, high))


def crop_centre(labels: torch.Tensor, present: list[int], rng: np.random.Generator, foreground_fraction: float) -> np.ndarray:
    """A crop centre (3,) in voxels of (X, Y, Z) ``labels``.

    With probability ``foreground_fraction`` a voxel of one organ of ``present``, the organ drawn
    uniformly, so that small organs (kidneys) are as often in the centre as the liver; else
    any voxel.
    """
    if present and rng.random() < foreground_fraction:
        organ_voxels = torch.nonzero(labels == present[rng.integers(len(present))])
        return organ_voxels[rng.integers(len(organ_voxels))].numpy()
    return np.array([rng.integers(n) for n in labels.shape])


def crop(volume: torch.Tensor, centre: np.ndarray, size: tuple[int, int, int], fill: float) -> torch.Tensor:
    """The (size) block of (X, Y, Z) ``volume`` centred on ``centre``, ``fill`` outside it."""
    start = centre - np.array(size) // 2
    block = torch.full(size, fill, dtype=volume.dtype)
    source = tuple(slice(max(s, 0), min(s + n, m)) for s, n, m in zip(start, size, volume.shape))
    target = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(source, start))
    block[target] = volume[source]
    return block


def random_crop(case: PreparedCase, size: tuple[int, int, int], rng: np.random.Generator, foreground_fraction: float = FOREGROUND_FRACTION,
                organ: int | None = None, centre: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A (size) crop of image and labels (see crop_centre), padded where the volume is smaller.

    ``organ``: the organ to centre on (when the crop is organ-centred); None: any labelled one.
    ``centre``: (3,) voxels, a centre already chosen (then ``organ`` is unused).
    Padding: image PAD_VALUE (the bottom of the HU window, as at inference), labels 0.
    """
    if centre is None:
        centre = crop_centre(case.labels, _centre_organs(case, organ), rng, foreground_fraction)
    return crop(case.image, centre, size, PAD_VALUE), crop(case.labels, centre, size, 0)


class Augmenter:
    """Random crop, flip (with label swap), rotation and scaling, intensity and noise, and a scan
    that ends inside the patch.

    patch: output size (X, Y, Z); crops are taken 25 % larger so that rotation and
    scaling do not bring in empty corners. spec: the model's preprocessing, needed for
    anatomy maps (synthetic CT is painted in HU on its grid, then normalised).
    flip_probability: of a left-right mirror (with the kidney labels swapped).
    field_of_view_probability: of a scan that ends inside the patch (``cut_field_of_view``).
    distractor_probability, lesion_probability: of a synthetic patch with distractors next to its
    organs and lesions inside them (``distractors.py``); organ_scaling_probability: of one
    with an organ grown or shrunk (``organ_size.py``); colon_probability: of one holding a kidney,
    with a colon beside each kidney where the map has none of its own (``colon.py``); renal_pelvis_probability:
    of each kidney in one, with urine in its sinus (``renal_sinus.py``).
    """

    def __init__(self, patch: tuple[int, int, int], seed: int, rotate_deg: float = 15.0, scale: float = 0.15,
                 flip_probability: float = 0.5, spec: Preprocessing | None = None,
                 field_of_view_probability: float = FIELD_OF_VIEW_PROBABILITY,
                 distractor_probability: float = DISTRACTOR_PROBABILITY, lesion_probability: float = LESION_PROBABILITY,
                 organ_scaling_probability: float = ORGAN_SCALING_PROBABILITY, negatives: NegativeCentres | None = None,
                 colon_probability: float = COLON_PROBABILITY, renal_pelvis_probability: float = RENAL_PELVIS_PROBABILITY):
        self.patch = tuple(patch)
        self.crop = tuple(int(round(n * 1.25)) for n in patch)
        self.rng = np.random.default_rng(seed)
        self.flip_probability = flip_probability
        self.field_of_view_probability = field_of_view_probability
        self.distractor_probability, self.lesion_probability = distractor_probability, lesion_probability
        self.organ_scaling_probability, self.colon_probability = organ_scaling_probability, colon_probability
        self.renal_pelvis_probability = renal_pelvis_probability
        self.spec = spec
        from monai.transforms import RandAffined  # the train extra (fit checks that it is installed)

        radians = np.deg2rad(rotate_deg)
        spatial = dict(prob=0.8, spatial_size=self.patch, rotate_range=(radians,) * 3, scale_range=(scale,) * 3, padding_mode="border")
        self.affine = RandAffined(keys=("image", "labels"), mode=("bilinear", "nearest"), **spatial)
        self.affine.set_random_state(seed=seed)
        self.map_affine = RandAffined(keys=SYNTHETIC_MAPS, mode="nearest", **spatial)
        self.map_affine.set_random_state(seed=seed + 1)
        self.negatives = negatives or NegativeCentres()

    def centre(self, case: PreparedCase | AnatomyCase, organ: int | None) -> np.ndarray | None:
        """A crop centre (3,) in voxels far from every organ for ``NO_ORGAN`` (``negatives.py``);
        else None (``crop_centre`` chooses)."""
        if organ != NO_ORGAN:
            return None
        far = self.negatives(case)
        return far[self.rng.integers(len(far))]

    def __call__(self, case: PreparedCase | AnatomyCase, organ: int | None = None,
                 centre: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """-> image (1, X, Y, Z) float32, labels (X, Y, Z) int64, labelled organ ids.

        ``organ``: the organ that organ-centred crops centre on; None: any labelled one;
        ``NO_ORGAN``: a centre far from every organ. ``centre``: (3,) voxels of ``case``, the patch's centre
        chosen by the caller (then ``organ`` only names what the patch surrounds).
        """
        if centre is None:
            centre = self.centre(case, organ)
        image, labels, labelled = self.synthetic(case, organ, centre) if isinstance(case, AnatomyCase) else self.real(case, organ, centre)
        if self.rng.random() < self.field_of_view_probability:
            image, labels = cut_field_of_view(image, labels, self.rng)
        return image, labels, labelled

    def real(self, case: PreparedCase, organ: int | None = None,
             centre: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """A patch of a real CT (centred on ``centre``, else chosen by ``random_crop``): crop, flip, deform,
        then contrast, brightness and noise."""
        image, labels = random_crop(case, self.crop, self.rng, organ=organ, centre=centre)
        labelled = case.labelled
        if self.rng.random() < self.flip_probability:
            image, labels = flip_left_right(image, labels)
            labelled = swap_labelled(labelled)
        sample = self.affine({"image": image[None], "labels": labels[None].float()})
        image, labels = torch.as_tensor(sample["image"]), torch.as_tensor(sample["labels"])[0].round().long()
        # Intensity: contrast and brightness changes, then noise, in the normalised units.
        image = image * float(self.rng.uniform(0.9, 1.1)) + float(self.rng.uniform(-0.1, 0.1))
        image = image + torch.from_numpy(self.rng.normal(0, self.rng.uniform(0, 0.05), image.shape).astype(np.float32))
        return image.float(), labels, labelled

    def synthetic(self, case: AnatomyCase, organ: int | None = None,
                  centre: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """A synthetic CT patch (centred on ``centre``, else chosen as ``crop_centre`` does): crop and deform the
        anatomy map, grow or shrink an organ, draw distractors, a colon and urine in the renal pelvis into it, then paint and corrupt it."""
        if self.spec is None:
            raise ValueError("an Augmenter for anatomy maps needs the model's preprocessing (spec)")
        if centre is None:
            centre = crop_centre(torch.from_numpy(case.labels), _centre_organs(case, organ), self.rng, FOREGROUND_FRACTION)
        maps = {"structures": torch.from_numpy(case.structures), "labels": torch.from_numpy(case.labels),
                "depth_mm": torch.from_numpy(case.depth_mm)}
        maps = {key: crop(volume, centre, self.crop, 0) for key, volume in maps.items()}
        labelled = case.labelled
        if self.rng.random() < self.flip_probability:
            # Mirrored like an image, the structure map keeps its kidney ids: both are painted alike.
            maps["structures"], maps["labels"] = flip_left_right(maps["structures"], maps["labels"])
            maps["depth_mm"] = maps["depth_mm"].flip(LEFT_RIGHT_AXIS)
            labelled = swap_labelled(labelled)
        deformed = self.map_affine({key: volume[None].float() for key, volume in maps.items()})
        structures, labels, depth = (torch.as_tensor(deformed[key])[0].round().to(torch.uint8).numpy() for key in SYNTHETIC_MAPS)
        spacing = float(self.spec.spacing_mm[0])
        structures, labels = scale_organ(structures, labels, self.rng, self.organ_scaling_probability)
        structures = add_distractors(structures, labels, spacing, self.rng, self.distractor_probability, self.lesion_probability)
        structures = add_colon(structures, labels, spacing, self.rng, self.colon_probability)
        structures = add_renal_pelvis(structures, spacing, self.rng, self.renal_pelvis_probability)
        hu = synthesise(structures, depth, spacing, self.rng)
        image = normalise(torch.from_numpy(hu), self.spec.hu_window)
        return image[None].float(), torch.from_numpy(labels).long(), labelled


def _centre_organs(case: PreparedCase | AnatomyCase, organ: int | None) -> list[int]:
    """The organs a crop may centre on: ``organ``, or every labelled organ present in the case."""
    if organ is not None:
        return [organ]
    return [label for label in case.labelled if label in case.organ_labels]
