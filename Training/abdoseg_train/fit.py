"""The training loop: patches -> V-Net -> partial-label Dice + CE -> Adam; validate; keep the best."""

from __future__ import annotations

import copy
import datetime
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from AbdoSegLib.bundle import save_bundle
from AbdoSegLib.cleanup import clean_labels
from AbdoSegLib.metrics import dice
from AbdoSegLib.organs import ORGANS
from AbdoSegLib.predict import infer_probabilities, resolve_device, window_size
from AbdoSegLib.preprocessing import Preprocessing
from AbdoSegLib.vnet import VNet, VNetConfig

from .augment import Augmenter
from .cases import Case
from .losses import class_mask, partial_dice_ce_loss
from .prepared import PreparedCase, prepare


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
    seed: int = 0
    device: str = "auto"
    name: str = "abdoseg-vnet"
    train_cases: list[str] = field(default_factory=list)
    validation_cases: list[str] = field(default_factory=list)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(tuple(self.spacing_mm), tuple(self.hu_window))

    @property
    def network_config(self) -> VNetConfig:
        return VNetConfig(width=self.width, depth=self.depth, kernel_size=self.kernel_size, convs_per_stage=tuple(self.convs_per_stage))


def validate(network: VNet, cases: list[PreparedCase], config: TrainConfig, device: torch.device) -> dict:
    """Per-case, per-labelled-organ Dice on the model grid, and the mean per organ."""
    network.eval()
    per_case = {}
    for case in cases:
        roi = window_size(tuple(case.image.shape), config.inference_patch, network.config.divisor)
        probabilities = infer_probabilities(network, case.image, roi, 0.25, device)
        predicted = clean_labels(probabilities.argmax(0).to(torch.uint8).numpy())
        reference = case.labels.numpy()
        per_case[case.name] = {
            organ.name: dice(predicted == organ.label, reference == organ.label)
            for organ in ORGANS if organ.label in case.labelled
        }
    network.train()
    means = {}
    for organ in ORGANS:
        values = [scores[organ.name] for scores in per_case.values() if scores.get(organ.name) is not None]
        if values:
            means[organ.name] = round(float(np.mean(values)), 4)
    return {"dice": means, "per_case": per_case, "mean_dice": round(float(np.mean(list(means.values()))), 4) if means else None}


def fit(train: list[Case], validation: list[Case], config: TrainConfig, out: Path, cache_dir: Path | None = None) -> dict:
    """Train, validate every ``validate_every`` epochs, export the best network to ``out``.

    Returns the validation record of the exported network.
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    config.train_cases = [case.name for case in train]
    config.validation_cases = [case.name for case in validation]
    train_data = [prepare(case, config.preprocessing, cache_dir) for case in train]
    validation_data = [prepare(case, config.preprocessing, cache_dir) for case in validation]

    network = VNet(config.network_config).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = config.epochs * config.iterations_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=total_steps, eta_min=config.learning_rate * 0.01)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    augment = Augmenter(config.patch, config.seed)
    rng = np.random.default_rng(config.seed)

    best = {"mean_dice": -1.0}
    best_state = copy.deepcopy(network.state_dict())
    log = []
    started = time.time()
    bar = tqdm(total=total_steps, desc="training", unit="it")
    for epoch in range(1, config.epochs + 1):
        losses = []
        for _ in range(config.iterations_per_epoch):
            samples = [augment(train_data[rng.integers(len(train_data))]) for _ in range(config.batch_size)]
            images = torch.stack([s[0] for s in samples]).to(device)
            labels = torch.stack([s[1] for s in samples]).to(device)
            mask = class_mask([s[2] for s in samples], device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                logits = network(images)
            loss = partial_dice_ce_loss(logits, labels, mask, config.ce_weight)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimiser)
            torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
            scaler.step(optimiser)
            scaler.update()
            scheduler.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses):.3f}", best=best["mean_dice"])
        record = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "seconds": round(time.time() - started, 1)}
        if validation_data and (epoch % config.validate_every == 0 or epoch == config.epochs):
            result = validate(network, validation_data, config, device)
            record.update(result)
            if result["mean_dice"] is not None and result["mean_dice"] > best["mean_dice"]:
                best = dict(result, epoch=epoch)
                best_state = copy.deepcopy(network.state_dict())
        log.append(record)
    bar.close()
    if not validation_data:
        best = {"epoch": config.epochs, "note": "no validation cases"}
        best_state = network.state_dict()
    network.load_state_dict(best_state)
    training = dict(asdict(config), seconds=round(time.time() - started, 1), device=str(device),
                    torch=torch.__version__, log=log)
    save_bundle(out, network.cpu(), config.preprocessing, config.inference_patch, config.name,
                datetime.date.today().isoformat(), training=json.loads(json.dumps(training)), validation=best)
    return best
