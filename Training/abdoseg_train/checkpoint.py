"""Training checkpoints: everything needed to resume a run exactly where it stopped.

A checkpoint is a torch file of tensors and plain values only; it is loaded with
``weights_only=True`` so that a checkpoint cannot run code.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from AbdoSegLib.errors import AbdoSegError
from AbdoSegLib.io.atomic import atomic_path


def save_checkpoint(path: Path, *, network, optimiser, scheduler, scaler, epoch: int, best: dict, best_state: dict,
                    config, log: list[dict]) -> None:
    """Write the state of a run after ``epoch`` (atomically)."""
    state = {
        "epoch": epoch,
        "network": network.state_dict(),
        "optimiser": optimiser.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "best": best,
        "best_state": best_state,
        "config": {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items()},
        "torch_rng": torch.get_rng_state(),
        "log": log,
    }
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by save_checkpoint; one sentence if it is not one."""
    if not Path(path).is_file():
        raise AbdoSegError(f"checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise AbdoSegError(f"{path} is not a readable AbdoSeg training checkpoint ({str(error).splitlines()[0][:120]}).") from None
    if not isinstance(state, dict) or "network" not in state or "epoch" not in state:
        raise AbdoSegError(f"{path} is not an AbdoSeg training checkpoint.")
    return state
