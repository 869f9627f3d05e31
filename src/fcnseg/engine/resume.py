"""Exact resume: the training state ``last.pt`` holds beyond the weights, saved and restored.

``last.pt`` adds ``progress`` (:class:`Progress`), ``optimizer``, ``scheduler``, ``scaler``,
``rng`` (one entry per rank), ``best_metrics``, ``world_size`` and ``completed`` to the
checkpoint format (:mod:`fcnseg.checkpoint`). With the sampling of :mod:`fcnseg.engine.sampling`
(a function of seed, epoch and position only), a resumed run continues from the exact batch.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from fcnseg.engine.distributed import log_main
from fcnseg.engine.optim import PolyLR
from fcnseg.engine.rng import restore_rng_state
from fcnseg.errors import CheckpointError


@dataclasses.dataclass
class Progress:
    """Where training stands; saved in last.pt."""

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of epoch `epoch` already trained on
    step: int = 0  # optimizer steps done
    best_miou: float = -math.inf
    best_epoch: float | None = None
    last_val_step: int = -1


def training_state(progress: Progress, optimizer: torch.optim.Optimizer, scheduler: PolyLR,
                   scaler: torch.amp.GradScaler | None, rng: list[dict], best_metrics: dict | None,
                   world_size: int, completed: bool) -> dict[str, Any]:
    """The resumable fields of ``last.pt`` (``rng``: :func:`fcnseg.engine.rng.capture_rng_state` of every rank)."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng,
            "progress": dataclasses.asdict(progress), "best_metrics": best_metrics,
            "world_size": world_size, "completed": completed}


def restore_training_state(ckpt: dict, path: Path, *, optimizer: torch.optim.Optimizer, scheduler: PolyLR,
                           scaler: torch.amp.GradScaler | None, total_steps: int, rank: int,
                           world_size: int) -> tuple[Progress, dict | None]:
    """Load the optimizer, scheduler, scaler and this rank's RNG states of ``ckpt`` (``last.pt``
    at ``path``); returns where training stands and the best validation scores so far."""
    missing = [k for k in ("optimizer", "scheduler", "progress", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a resumable checkpoint (no {', '.join(missing)}); "
                              f"use --init to start a new run from its weights")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: optimizer/scheduler state does not fit this run "
                              f"({e}); use --init to start a new run from its weights") from None
    if scheduler.total_steps != total_steps:
        log_main(f"note: total steps changed from {scheduler.total_steps} to {total_steps} "
                 f"(--epochs/--iters); the poly schedule is stretched from here on")
        scheduler.total_steps = total_steps
    progress = Progress(**ckpt["progress"])
    if ckpt.get("world_size", 1) != world_size and progress.batch_in_epoch:
        log_main(f"note: world size changed ({ckpt.get('world_size')} -> {world_size}); epoch "
                 f"{progress.epoch + 1} restarts from its first batch")
        progress.batch_in_epoch = 0
    rng = ckpt["rng"]
    restore_rng_state(rng[rank] if rank < len(rng) else rng[0])
    return progress, ckpt.get("best_metrics")
