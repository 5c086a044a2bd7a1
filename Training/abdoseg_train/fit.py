"""The training loop: patches -> V-Net -> partial-label Dice + CE -> Adam; validate; keep the best.

A run writes into a work folder: ``checkpoint.pt`` (resumable, after every epoch),
``log.csv`` and ``tensorboard/``; the best network is exported as a model bundle.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import importlib.util
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.inference.predict import resolve_device
from AbdoSegLib.model.bundle import FineStage, load_bundle, save_bundle
from AbdoSegLib.model.vnet import VNet

from . import distributed
from .anatomy import AnatomySource, load_anatomy
from .cases import Case
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .logs import LOG_FILE, TrainingLog
from .losses import partial_dice_ce_loss
from .patches import epoch_batches
from .prepared import prepare
from .validation import ValidationResult, validate

CHECKPOINT_FILE = "checkpoint.pt"
NO_VALIDATION_NOTE = "no validation cases: the last epoch is exported"
INPUT_WEIGHT = "input_conv.0.weight"  # (width, in_channels, k, k, k): the V-Net's first convolution


def fit(train: list[Case], validation: list[Case], config: TrainConfig, out: Path, workdir: Path,
        cache_dir: Path | None = None, resume: Path | None = None, init: Path | None = None,
        synthetic: list[AnatomySource] | None = None) -> dict:
    """Train, validate every ``validate_every`` epochs, export the best network to ``out``
    (or the last one, with its validation, when ``config.keep`` is "last").

    ``synthetic``: anatomy maps; a fraction ``synthetic_fraction`` of the patches (all of them
    when there are no real cases) is synthetic CT painted from them afresh each time.

    ``init``: a model bundle whose weights the network starts from (fine-tuning); it must have
    the same architecture and preprocessing (for a second stage: the same architecture and HU
    window; a first stage's network, which knows CT at its coarser spacing, may start it).

    ``config.stage`` "fine": the second stage, trained on crops around each organ (``fine_crops.py``)
    with the HU window of the first stage of the bundle ``config.coarse_bundle``, and
    exported with it as a two-stage bundle. Its validation runs the fine network alone over each
    validation case; with ``config.coarse_channel`` (the first stage's probability as a second input,
    simulated in training by ``coarse_prior.py``) it has none: evaluate the exported bundle instead.

    Under torchrun every process trains on its own patches (DistributedDataParallel); the
    first process validates, logs, checkpoints and exports. Returns the validation record of
    the exported network.
    """
    _require_training_extra()
    _check_workdir(workdir, resume)
    if config.stage == "fine":
        if config.coarse_channel and validation:
            raise AbdoSegError("a second stage that reads the first stage's probability is validated as a two-stage bundle, "
                               "not alone: train it without validation cases and measure the export with abdoseg-train evaluate.")
        coarse = load_bundle(config.coarse_bundle)
        config.hu_window, config.coarse_model = coarse.preprocessing.hu_window, coarse.model_id
    run = distributed.setup(resolve_device(config.device))
    torch.manual_seed(config.seed + run.rank)
    config.train_cases = [case.name for case in train]
    config.validation_cases = [case.name for case in validation]
    config.synthetic_cases = [source.name for source in synthetic or []]
    train_data = _load_all(prepare, train, config, cache_dir)
    synthetic_data = _load_all(load_anatomy, synthetic or [], config, cache_dir)
    if not train_data and not synthetic_data:
        raise AbdoSegError("no training cases and no anatomy maps were given.")
    validation_data = _load_all(prepare, validation, config, cache_dir) if run.is_main else []

    network = VNet(config.network_config)
    if init:
        state, config.initialised_from = _initial_weights(init, config)
        network.load_state_dict(state)
    network = network.to(run.device)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = config.epochs * config.iterations_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=total_steps, eta_min=config.learning_rate * 0.01)
    scaler = torch.amp.GradScaler("cuda", enabled=run.device.type == "cuda")
    best: dict = {"mean_dice": None}
    best_state = copy.deepcopy(network.state_dict())
    log = TrainingLog(workdir) if run.is_main else None
    first_epoch = 1
    if resume:
        state = load_checkpoint(resume)
        _check_same_schedule(resume, state["config"], config)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        best, best_state, first_epoch = state["best"], state["best_state"], state["epoch"] + 1
        if log:
            for record in state["log"]:
                log.add(record)
    model = DistributedDataParallel(network) if run.enabled else network

    started = time.time()
    bar = tqdm(total=total_steps, initial=(first_epoch - 1) * config.iterations_per_epoch, desc="training", unit="it", disable=not run.is_main)
    for epoch in range(first_epoch, config.epochs + 1):
        losses = []
        for images, labels, mask in epoch_batches(train_data, synthetic_data, config, run.rank, epoch, pin_memory=run.device.type == "cuda"):
            images, labels, mask = (tensor.to(run.device, non_blocking=True) for tensor in (images, labels, mask))
            with torch.autocast("cuda", dtype=torch.float16, enabled=run.device.type == "cuda"):
                logits = model(images)
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
        if run.is_main:
            record = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4),
                      "learning_rate": scheduler.get_last_lr()[0], "seconds": round(time.time() - started, 1)}
            if validation_data and (epoch % config.validate_every == 0 or epoch == config.epochs):
                result = validate(network, validation_data, config.inference_patch, config.hu_window, run.device)
                record.update(result.flat())
                if _exported(config, epoch, result, best):
                    best = dict(result.summary(), epoch=epoch)
                    best_state = copy.deepcopy(network.state_dict())
            log.add(record)
            save_checkpoint(Path(workdir) / CHECKPOINT_FILE, network=network, optimiser=optimiser, scheduler=scheduler,
                            scaler=scaler, epoch=epoch, best=best, best_state=best_state, config=config, log=log.rows)
        run.barrier()
    bar.close()
    if run.is_main:
        if not validation_data:
            best = {"epoch": config.epochs, "note": NO_VALIDATION_NOTE}
            best_state = network.state_dict()
        network.load_state_dict(best_state)
        export(network, config, best, out, log.rows, seconds=time.time() - started, device=str(run.device))
        log.close()
    run.barrier()
    run.close()
    return best


def _require_training_extra() -> None:
    """Training augments with MONAI and logs to TensorBoard: the ``train`` extra; evaluate, export and synth do without."""
    missing = [name for name in ("monai", "tensorboard") if importlib.util.find_spec(name) is None]
    if missing:
        raise AbdoSegError(f"training needs {' and '.join(missing)}, which is not installed; install it with pip install 'abdoseg[train]'.")


def _check_workdir(workdir: Path, resume: Path | None) -> None:
    """Refuse a work folder that holds another run's checkpoint or log, unless this run resumes that checkpoint."""
    found = [name for name in (CHECKPOINT_FILE, LOG_FILE) if (Path(workdir) / name).exists()]
    if found and not (resume and Path(resume).resolve().parent == Path(workdir).resolve()):
        raise AbdoSegError(f"{workdir} already holds a run ({', '.join(found)}); pass --resume {Path(workdir) / CHECKPOINT_FILE} "
                           f"to continue it, or choose another --workdir.")


def _load_all(load, items: list, config: TrainConfig, cache_dir: Path | None) -> list:
    """``load(item, config.preprocessing, cache_dir)`` for each item, in ``config.workers``
    processes (0: this one)."""
    if config.workers < 1 or len(items) < 2:
        return [load(item, config.preprocessing, cache_dir) for item in items]
    # One thread per process, as in DataLoader workers: a forked child must not enter the OpenMP pool of its parent.
    with ProcessPoolExecutor(min(config.workers, len(items)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return list(pool.map(load, items, [config.preprocessing] * len(items), [cache_dir] * len(items)))


def _check_same_schedule(path: Path, stored: dict, config: TrainConfig) -> None:
    """Refuse to resume a run for another length: its learning-rate schedule was laid out for the first."""
    planned = (stored.get("epochs"), stored.get("iterations_per_epoch"))
    if planned != (config.epochs, config.iterations_per_epoch):
        raise AbdoSegError(
            f"{path} belongs to a run of {planned[0]} epochs of {planned[1]} iterations; resume it with the same "
            f"--epochs and --iterations-per-epoch, or start a new run from its network with --init."
        )


def _exported(config: TrainConfig, epoch: int, result: ValidationResult, best: dict) -> bool:
    """Whether this epoch's network becomes the one exported (see ``TrainConfig.keep``)."""
    if config.keep == "last":
        return epoch == config.epochs
    return best["mean_dice"] is None or (result.mean_dice is not None and result.mean_dice > best["mean_dice"])


def _initial_weights(path: Path, config: TrainConfig) -> tuple[dict, str]:
    """(state dict, model id) of a bundle that fits this run's architecture and preprocessing.

    A second stage starts from a two-stage bundle's second stage, or from a single-stage bundle's network. A second
    stage with ``coarse_channel`` may start from a network of one input channel: the CT's weights are kept and the
    prior's start at zero, so that it first reads the CT alone (the input stage's residual adds the prior to half
    of its channels, though).
    """
    bundle = load_bundle(path)
    fine = config.stage == "fine"
    network = bundle.fine.network if fine and bundle.fine is not None else bundle.network
    same_input = bundle.preprocessing.hu_window == config.preprocessing.hu_window if fine else bundle.preprocessing == config.preprocessing
    widened = fine and config.coarse_channel and network.config.in_channels == 1
    wanted = dataclasses.replace(config.network_config, in_channels=1) if widened else config.network_config
    if network.config != wanted or not same_input:
        raise AbdoSegError(f"{path} has another architecture or preprocessing than this run; start from it only with the same settings.")
    state = network.state_dict()
    if widened:
        weight = state[INPUT_WEIGHT]
        state[INPUT_WEIGHT] = torch.cat([weight, torch.zeros_like(weight)], dim=1)
    return state, bundle.model_id


def export(network: VNet, config: TrainConfig, validation: dict, out: Path, log: list[dict], seconds: float, device: str,
           half: bool = False, crop_margin_mm: float | None = None) -> str:
    """Write ``network`` as a model bundle with the run's provenance; returns its SHA-256. ``half``: float16 weights.
    ``crop_margin_mm``: a second stage's margin at inference (mm), if not the run's ``config.crop_margin_mm``.

    A second stage is written with its first stage (``config.coarse_bundle``, which must be the file it was
    trained with), whose training and validation records stay at the top and gain a ``fine_stage`` entry; a
    two-stage ``coarse_bundle`` has its second stage and that entry replaced.
    """
    training = json.loads(json.dumps(dict(asdict(config), seconds=round(seconds, 1), device=device, torch=torch.__version__, log=log)))
    validation = json.loads(json.dumps(validation))
    today = datetime.date.today().isoformat()
    if config.stage != "fine":
        return save_bundle(out, network.cpu(), config.preprocessing, config.inference_patch, config.name, today,
                           training=training, validation=validation, half=half)
    coarse = load_bundle(config.coarse_bundle)
    if coarse.model_id != config.coarse_model:
        raise AbdoSegError(f"{config.coarse_bundle} is now {coarse.model_id}, not the first stage {config.coarse_model} that this "
                           "second stage was trained with; restore that file to export.")
    # The second stage runs windows of its training patch, laid on each crop as its patches were (fine_crops.py).
    margin = config.crop_margin_mm if crop_margin_mm is None else crop_margin_mm
    fine = FineStage(network.cpu(), tuple(config.spacing_mm), margin, tuple(config.patch),
                     organs=tuple(config.fine_organs), coarse_channel=config.coarse_channel)
    return save_bundle(out, coarse.network, coarse.preprocessing, coarse.patch_size, config.name, today, overlap=coarse.overlap,
                       training=dict(coarse.metadata.get("training", {}), fine_stage=training),
                       validation=dict(coarse.metadata.get("validation", {}), fine_stage=validation), fine=fine, half=half)
