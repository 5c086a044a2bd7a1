"""The settings of a training run (``TrainConfig``), stored in the bundle's training metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

from AbdoSegLib.model.preprocessing import Preprocessing
from AbdoSegLib.model.vnet import VNetConfig
from AbdoSegLib.organs import ORGAN_NAMES

from .augment import FIELD_OF_VIEW_PROBABILITY
from .colon import COLON_PROBABILITY
from .distractors import DISTRACTOR_PROBABILITY, LESION_PROBABILITY
from .organ_size import ORGAN_SCALING_PROBABILITY
from .renal_sinus import RENAL_PELVIS_PROBABILITY


@dataclass
class TrainConfig:
    """Everything a training run depends on (stored in the bundle's training metadata)."""

    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    hu_window: tuple[float, float] = (-200.0, 400.0)
    width: int = 8
    depth: int = 4
    kernel_size: int = 3
    convs_per_stage: tuple[int, ...] = (1, 2, 3, 3, 3)
    patch: tuple[int, int, int] = (80, 80, 80)
    inference_patch: tuple[int, int, int] = (160, 160, 160)
    batch_size: int = 2
    epochs: int = 100
    iterations_per_epoch: int = 50
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    ce_weight: float = 1.0
    grad_clip: float = 12.0
    validate_every: int = 5
    synthetic_fraction: float = 0.5  # of patches painted from anatomy maps, when there are both kinds
    flip_probability: float = 0.5
    field_of_view_probability: float = FIELD_OF_VIEW_PROBABILITY  # of a patch in which the scan ends
    negative_fraction: float = 0.15  # of patches centred > 60 mm from every organ, from any case (draw.py)
    distractor_probability: float = DISTRACTOR_PROBABILITY  # of a synthetic patch with cysts/masses beside organs
    lesion_probability: float = LESION_PROBABILITY  # of a synthetic patch with lesions inside organs
    organ_scaling_probability: float = ORGAN_SCALING_PROBABILITY  # of a synthetic patch with an organ grown/shrunk
    colon_probability: float = COLON_PROBABILITY  # of a synthetic patch with a kidney, with a colon drawn (``colon.py``)
    renal_pelvis_probability: float = RENAL_PELVIS_PROBABILITY  # of a kidney with urine in its sinus (``renal_sinus.py``)
    keep: str = "best"  # which network is exported: "best" on validation, or "last" (no selection)
    workers: int = 0  # processes that prepare cases and paint patches (0: the training process itself)
    seed: int = 0
    device: str = "auto"
    name: str = "abdoseg-vnet"
    train_cases: list[str] = field(default_factory=list)
    validation_cases: list[str] = field(default_factory=list)
    synthetic_cases: list[str] = field(default_factory=list)  # anatomy maps painted into synthetic CT
    initialised_from: str = ""  # model id of the bundle a fine-tuning run started from
    # The second stage (``stage`` "fine", ``fine_crops.py``): trained on crops around each organ at spacing_mm and
    # exported with the first stage of ``coarse_bundle`` (path; ``coarse_model`` its model id) in one bundle.
    stage: str = "coarse"
    coarse_bundle: str = ""
    coarse_model: str = ""
    crop_margin_mm: float = 20.0  # around the first stage's organ at inference; drawn from 0.5x to 1.5x in training
    fine_organs: tuple[str, ...] = tuple(ORGAN_NAMES)  # the organs the second stage refines; its crops surround only them
    localisation_error_mm: float = 5.0  # SD (mm) of the first stage's error at each face of an organ's box, about 2 of its 3 mm voxels
    coarse_channel: bool = False  # the second stage also reads the first stage's probability of the organ (``coarse_prior.py``)
    prior_sinus_probability: float = 0.0  # of a kidney's simulated prior covering its renal sinus (``coarse_prior.py``)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(tuple(self.spacing_mm), tuple(self.hu_window))

    @property
    def network_config(self) -> VNetConfig:
        return VNetConfig(in_channels=2 if self.coarse_channel else 1, width=self.width, depth=self.depth, kernel_size=self.kernel_size,
                          convs_per_stage=tuple(self.convs_per_stage))
