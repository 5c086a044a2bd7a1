"""The stream of training batches, painted and augmented in worker processes.

Each epoch of each process reads a fresh stream whose randomness is seeded by (run seed,
rank, epoch, worker): the batches of an epoch do not depend on what came before it, so a
resumed run draws exactly the batches that an uninterrupted one would have drawn. With
``workers`` > 0, batch i of an epoch comes from worker i mod ``workers`` (the DataLoader
reads its workers in turn), so a run is reproducible for a given number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from AbdoSegLib.model.bundle import DEFAULT_OVERLAP
from AbdoSegLib.organs import organ_by_name

from .anatomy import AnatomyCase
from .augment import Augmenter, mirrored
from .coarse_prior import simulated_prior
from .config import TrainConfig
from .draw import NO_ORGAN, draw_case
from .fine_crops import SCAN_EDGE_PROBABILITY, organ_crop, window_centre
from .losses import class_mask
from .negatives import NegativeCentres
from .prepared import PreparedCase

KIDNEYS = frozenset(organ_by_name(name).label for name in ("right_kidney", "left_kidney"))

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class PatchBatches(IterableDataset):
    """An endless stream of batches for one epoch of one process.

    Each batch: images (N, K, X, Y, Z) float32, labels (N, X, Y, Z) int64 and the class mask
    (N, C) bool of the organs each patch labels (``losses.class_mask``); N = batch size,
    (X, Y, Z) = the training patch; K = 1, or 2 for a second stage with ``coarse_channel`` (the CT and
    a first stage's probability of the organ the crop surrounds, ``coarse_prior.py``).
    """

    def __init__(self, real: list[PreparedCase], synthetic: list[AnatomyCase], config: TrainConfig, rank: int, epoch: int):
        super().__init__()
        self.real, self.synthetic, self.config = real, synthetic, config
        self.rank, self.epoch = rank, epoch
        self.negatives = NegativeCentres()
        # The second stage's crops surround only the organs it refines.
        self.organs = frozenset(organ_by_name(name).label for name in config.fine_organs) if config.stage == "fine" else None

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        seeds = np.random.SeedSequence([self.config.seed, self.rank, self.epoch, worker.id if worker else 0])
        draw_seed, augment_seed, prior_seed = seeds.generate_state(3)  # the first two as before the prior existed
        rng, prior_rng = np.random.default_rng(draw_seed), np.random.default_rng(prior_seed)
        # MONAI's random state takes a 32-bit seed, and the Augmenter uses seed + 1 as well.
        augment = Augmenter(self.config.patch, int(augment_seed) % (2**31), flip_probability=self.config.flip_probability,
                            spec=self.config.preprocessing, field_of_view_probability=self.config.field_of_view_probability,
                            distractor_probability=self.config.distractor_probability,
                            lesion_probability=self.config.lesion_probability,
                            organ_scaling_probability=self.config.organ_scaling_probability,
                            colon_probability=self.config.colon_probability,
                            renal_pelvis_probability=self.config.renal_pelvis_probability,
                            negatives=self.negatives)
        while True:
            samples = [self._sample(augment, rng, prior_rng) for _ in range(self.config.batch_size)]
            yield (torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples]),
                   class_mask([s[2] for s in samples]))

    def _sample(self, augment: Augmenter, rng: np.random.Generator,
                prior_rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """One augmented patch (``Augmenter``), with the prior channel of the organ it surrounds when the config asks
        (drawn from its own generator: the patches are those of a run without it)."""
        case, organ, centre = self._draw(rng)
        image, labels, labelled = augment(case, organ, centre)
        if self.config.coarse_channel:
            image = torch.cat([image, self._prior(labels, organ, prior_rng)[None]])
        return image, labels, labelled

    def _prior(self, labels: torch.Tensor, organ: int | None, rng: np.random.Generator) -> torch.Tensor:
        """The simulated first-stage probability (X, Y, Z) of ``organ`` in a patch's labels (of its mirror
        image when the patch was flipped left-right); empty for a patch centred on no organ."""
        if organ in (None, NO_ORGAN):
            mask = np.zeros(labels.shape, dtype=bool)
        else:
            if organ not in labels and mirrored(organ) in labels:
                organ = mirrored(organ)
            mask = (labels == organ).numpy()
        # Drawn only when asked, so that a run without it keeps the priors it had before the option existed.
        cover_sinus = (organ in KIDNEYS and self.config.prior_sinus_probability > 0
                       and rng.random() < self.config.prior_sinus_probability)
        return simulated_prior(mask, float(self.config.spacing_mm[0]), rng, cover_sinus)

    def _draw(self, rng: np.random.Generator) -> tuple[PreparedCase | AnatomyCase, int | None, np.ndarray | None]:
        """A case, the organ to centre on and the patch's centre (None: the Augmenter chooses); for the second stage
        the case is cut to a crop around the organ, which the patch lies on as an inference window does."""
        case, organ = draw_case(self.real, self.synthetic, self.config.synthetic_fraction, rng, self.config.negative_fraction,
                                self.negatives, self.organs)
        if self.config.stage != "fine" or organ in (None, NO_ORGAN) or organ not in case.organ_labels:
            return case, organ, None
        case = organ_crop(case, organ, self.config.crop_margin_mm, self.config.localisation_error_mm, rng, SCAN_EDGE_PROBABILITY)
        return case, organ, window_centre(case.labels.shape, self.config.patch, DEFAULT_OVERLAP, rng)


def epoch_batches(real: list[PreparedCase], synthetic: list[AnatomyCase], config: TrainConfig, rank: int, epoch: int,
                  pin_memory: bool = False) -> Iterator[Batch]:
    """The ``config.iterations_per_epoch`` batches of ``epoch``, from ``config.workers``
    processes (0: this one)."""
    loader = DataLoader(PatchBatches(real, synthetic, config, rank, epoch), batch_size=None, num_workers=config.workers,
                        pin_memory=pin_memory, prefetch_factor=4 if config.workers else None,
                        persistent_workers=False)
    batches = iter(loader)
    try:
        for _ in range(config.iterations_per_epoch):
            yield next(batches)
    finally:
        del batches  # stops the workers
