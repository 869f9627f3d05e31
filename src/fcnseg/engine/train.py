"""Training: ``fcnseg train`` and :func:`train`.

Per-pixel cross entropy (255 = ignore) over random crops, SGD with momentum 0.9 (the
paper) or AdamW, a poly learning-rate schedule (power 0.9, optional linear warmup), and a
validation on the full-size val images after every epoch from one confusion matrix over
the split. Staged training (FCN-32s -> 16s -> 8s, each initialised from the previous
stage's best weights) with ``--stages``.

Run directory::

    config.json        resolved config + code version (fcnseg, git describe) + torch/threads/device
    metrics.jsonl      one line per validation: epoch, step, train_loss, lr, images_per_s, val{...}, time
    steps.jsonl        one line per optimizer step: step, epoch, loss, lr (exact floats)
    train_curve.png    train loss and val mIoU vs epoch
    confusion_matrix.png  of the best epoch (row-normalised)
    best.pt            best val mIoU (weights + class names/palette + metrics)
    last.pt            resumable: + optimizer, scheduler, grad scaler, RNG states, position in the epoch
    summary.json       best mIoU, steps, why the run stopped

Reliability:

- Every file is written atomically; a kill at any moment leaves the previous checkpoint.
- SIGINT / SIGTERM: the current step finishes, ``last.pt`` is saved, and the process exits
  with 130 / 143 (128 + signal). ``--resume`` continues from the exact batch: the sample
  order and each sample's augmentation are functions of (seed, epoch, position) only
  (:mod:`fcnseg.engine.sampling`), and optimizer, scheduler, scaler and RNG states are
  restored. With ``--deterministic`` on CPU the per-step losses of an interrupted and
  resumed run are bit-identical to an uninterrupted one (``steps.jsonl``).
- ``--seed S --deterministic`` gives bit-identical CPU runs (identical weights): it enables
  ``torch.use_deterministic_algorithms``, puts MKL in its reproducible mode
  (``MKL_CBWR=AUTO,STRICT``: GEMM results then do not depend on memory alignment) and
  fixes every seed. Runs must use the same
  number of torch threads and the same world size. On CUDA it is best effort (a few
  kernels have no deterministic version; torch then warns).
- A NaN/inf loss stops the run at that step with :class:`~fcnseg.errors.DivergenceError`;
  the diverged weights are never saved (``best.pt`` / ``last.pt`` keep the last good state).
- ``--max-minutes``: checked between steps; the run stops cleanly, validates if the last
  validation is stale, updates ``best.pt``, writes the metrics and ``last.pt`` (resumable).
- A run directory is never reused without ``--overwrite`` (or ``--resume``); an unwritable
  or full output disk is reported before any work starts.
- Checkpoints are loaded with ``weights_only=True``: a malicious pickle is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from fcnseg.engine import distributed as D
from fcnseg.engine.config import STAGES, TrainConfig, check_resume_compatible, resolve, split_model_name
from fcnseg.engine.evaluate import evaluate, json_safe, make_eval_loader
from fcnseg.engine.losses import load_class_weights, median_frequency_weights, pixel_frequencies, segmentation_loss
from fcnseg.engine.optim import PolyLR, build_optimizer
from fcnseg.engine.rng import capture_rng_state, deterministic_mode, restore_rng_state, seed_everything
from fcnseg.engine.runtime import AMP_MODES, autocast, environment_info, resolve_amp, resolve_device
from fcnseg.engine.sampling import ResumableSampler, SeededDataset, worker_init
from fcnseg.engine.signals import StopRequest, TrainingInterrupted
from fcnseg.errors import CheckpointError, ConfigError, DivergenceError, FcnsegError

__all__ = ["TrainConfig", "train", "load_run_config", "TrainingInterrupted", "add_cli_arguments", "cli_main"]

# Files a run writes; --overwrite removes exactly these (and stage sub-directories' copies).
RUN_FILES = ("config.json", "metrics.jsonl", "steps.jsonl", "train_curve.png", "confusion_matrix.png",
             "best.pt", "last.pt", "summary.json")


def log(msg: str) -> None:
    """Print on the main process only."""
    if D.is_main_process():
        print(msg, flush=True)


def train(cfg: TrainConfig) -> Path:
    """Train as configured by ``cfg``; return the run directory.

    Raises :class:`TrainingInterrupted` after saving ``last.pt`` when stopped by
    SIGINT/SIGTERM, :class:`~fcnseg.errors.DivergenceError` on a NaN/inf loss, and other
    :class:`~fcnseg.errors.FcnsegError` subclasses for bad settings, data or checkpoints.
    """
    cfg = resolve(cfg)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    D.init_distributed(device.type)
    try:
        if cfg.stages:
            return _train_staged(cfg, device)
        return Trainer(cfg, device).run()
    finally:
        if owns_group:
            D.cleanup()


# ----------------------------------------------------------------------------- output dir

def _on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0; every rank raises rank 0's FcnsegError (so none hangs in a collective)."""
    result, err = None, None
    if D.is_main_process():
        try:
            result = fn()
        except FcnsegError as e:
            err = (type(e).__name__, str(e))
    err = D.broadcast_object(err)
    if err is not None:
        import fcnseg.errors as errors

        raise getattr(errors, err[0], ConfigError)(err[1])
    return result


def _prepare_run_dir(out: Path, *, resume: bool, overwrite: bool, needs: str = "last.pt") -> None:
    from fcnseg.fileio import prepare_output_dir

    if resume:
        if not (out / needs).is_file():
            raise ConfigError(f"--resume: {out / needs} not found; nothing to resume (start without --resume)")
        prepare_output_dir(out, overwrite=True, what="run")  # writable, enough free space
        return
    prepare_output_dir(out, overwrite=overwrite, what="run")
    if overwrite:
        for sub in (out, *(out / s for s in STAGES)):
            for name in RUN_FILES:
                (sub / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- model

def _load_init(path: str, model_name: str, num_classes: int) -> torch.nn.Module:
    """``--init CKPT``: the checkpoint's weights as ``model_name``, upgraded 32s -> 16s -> 8s if needed."""
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.models import upgrade

    ckpt = load_checkpoint(path)  # weights_only: refuses pickled code
    src = ckpt["model"].get("name", "?")
    if ckpt["model"].get("num_classes") != num_classes:
        raise CheckpointError(f"--init {path}: checkpoint has {ckpt['model'].get('num_classes')} classes but "
                              f"the data has {num_classes}; use a checkpoint for this label set")
    src_stride, src_backbone = split_model_name(src)
    dst_stride, dst_backbone = split_model_name(model_name)
    if src_backbone != dst_backbone:
        raise CheckpointError(f"--init {path}: checkpoint is for model '{src}' (backbone {src_backbone}), "
                              f"cannot initialise '{model_name}' (backbone {dst_backbone})")
    if "unet" in (src_stride, dst_stride):
        if src_stride != dst_stride:
            raise CheckpointError(f"--init {path}: checkpoint is for model '{src}', cannot initialise "
                                  f"'{model_name}' (only FCNs upgrade 32s -> 16s -> 8s); to start from its "
                                  f"encoder, pass it as --backbone-weights instead")
    elif STAGES.index(src_stride) > STAGES.index(dst_stride):
        raise CheckpointError(f"--init {path}: cannot go from the finer '{src}' to the coarser '{model_name}'")
    model = model_from_checkpoint(ckpt, num_classes=num_classes)
    if src_stride != dst_stride:
        model = upgrade(model, f"fcn{dst_stride}")  # staged training: new skips start at zero
        log(f"initialised {model_name} from {src} ({path}) by upgrade")
    else:
        log(f"initialised {model_name} from {path}")
    return model


def _build(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    from fcnseg.models import build_model

    if cfg.init:
        return _load_init(cfg.init, cfg.model, num_classes)
    try:
        return build_model(cfg.model, num_classes=num_classes, geometry=cfg.geometry,
                           backbone_weights=cfg.backbone_weights, **cfg.model_kwargs)
    except TypeError as e:  # unknown --model-arg for this backbone
        raise ConfigError(f"--model-arg: {e}") from None


def _model_of(ckpt: dict, path: Path, cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """Model of a resumable checkpoint, refusing one for another model or class count."""
    from fcnseg.checkpoint import model_from_checkpoint

    saved = ckpt["model"]
    if saved.get("name") != cfg.model:
        raise CheckpointError(f"{path}: checkpoint is for model '{saved.get('name')}', not '{cfg.model}'")
    if saved.get("num_classes") != num_classes:
        raise CheckpointError(f"{path}: checkpoint has {saved.get('num_classes')} classes but the data has "
                              f"{num_classes}")
    return model_from_checkpoint(ckpt, num_classes=num_classes, name=cfg.model)


# ----------------------------------------------------------------------------- trainer

@dataclasses.dataclass
class Progress:
    """Where training stands; saved in last.pt."""

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of epoch `epoch` already trained on
    step: int = 0  # optimizer steps done
    best_miou: float = -math.inf
    best_epoch: float | None = None
    last_val_step: int = -1


class Trainer:
    """One training run (one stage): set-up, loop, validation, checkpoints."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.out = Path(cfg.out)
        self.rank, self.world = D.get_rank(), D.get_world_size()
        self.main = D.is_main_process()
        self.p = Progress()
        self.metrics_rows: list[dict] = []
        self.best_metrics: dict | None = None
        self.stop = StopRequest()

    # -- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        from fcnseg.checkpoint import load_checkpoint
        from fcnseg.data.datasets import open_dataset
        from fcnseg.data.transforms import eval_transforms, pad_collate, train_transforms

        cfg, dev = self.cfg, self.device
        # Before any work: the run dir is new (or --overwrite / --resume), writable, not full.
        _on_main(lambda: _prepare_run_dir(self.out, resume=cfg.resume, overwrite=cfg.overwrite))
        D.barrier()
        seed_everything(cfg.seed)  # same on every rank: identical initial weights

        self.train_ds = open_dataset(cfg.data, cfg.train_split,
                                     transforms=train_transforms(cfg.crop_size, scale=tuple(cfg.scale)
                                                                 if cfg.scale else None),
                                     sbd_root=cfg.sbd)  # SBD: train_aug minus VOC val
        self.val_ds = open_dataset(cfg.data, cfg.val_split, transforms=eval_transforms())
        if len(self.train_ds) == 0 or len(self.val_ds) == 0:
            raise ConfigError(f"--data {cfg.data}: split {cfg.train_split!r} or {cfg.val_split!r} is empty")
        self.num_classes = self.train_ds.num_classes
        if self.val_ds.num_classes != self.num_classes:
            raise ConfigError(f"--data {cfg.data}: train and val splits disagree on the number of classes")

        resume_ckpt = None
        if cfg.resume:
            last = self.out / "last.pt"
            resume_ckpt = load_checkpoint(last)  # weights_only: refuses pickled code
            check_resume_compatible(cfg, resume_ckpt.get("config", {}), str(last))
            model = _model_of(resume_ckpt, last, cfg, self.num_classes)
        else:
            model = _build(cfg, self.num_classes)
        model.to(dev)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model

        self.class_weights = self._class_weights()
        self.amp_dtype = resolve_amp(cfg.amp, dev)
        # GradScaler only for fp16 (bf16 has fp32's exponent range: no underflow to fix).
        self.scaler = torch.amp.GradScaler(dev.type) if self.amp_dtype == torch.float16 else None

        self.sampler = ResumableSampler(len(self.train_ds), seed=cfg.seed, rank=self.rank, world_size=self.world)
        workers = cfg.workers
        self.loader = DataLoader(
            SeededDataset(self.train_ds), batch_size=cfg.batch_size, sampler=self.sampler,
            num_workers=workers, collate_fn=pad_collate, pin_memory=dev.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=worker_init, generator=torch.Generator())
        self.val_loader = make_eval_loader(self.val_ds, batch_size=cfg.val_batch_size, workers=min(workers, 2),
                                           device=dev, persistent=True)
        self.steps_per_epoch = math.ceil(self.sampler.shard_len / cfg.batch_size)
        self.total_steps = cfg.iters or cfg.epochs * self.steps_per_epoch
        self.n_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        self.optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        self.scheduler = PolyLR(self.optimizer, self.total_steps, power=cfg.poly_power,
                                warmup_steps=cfg.warmup_iters)
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        else:
            # Training RNG streams (dropout) differ per rank; the init above was shared.
            seed_everything(int(np.random.SeedSequence([cfg.seed, self.rank, 1]).generate_state(1)[0]))
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None)
        else:
            self.ddp = model
        if self.main:
            self._write_config(resumed=resume_ckpt is not None)

    def _class_weights(self) -> torch.Tensor | None:
        cfg = self.cfg
        if cfg.class_weights == "none":
            return None
        if cfg.class_weights == "median-freq":
            def compute() -> list[float]:
                counts = pixel_frequencies(self.train_ds.read_mask, len(self.train_ds), self.num_classes)
                return median_frequency_weights(*counts).tolist()

            values = _on_main(compute)  # reads every training mask once, on rank 0
            values = D.broadcast_object(values)
        else:
            values = load_class_weights(cfg.class_weights, self.num_classes).tolist()
        self.class_weight_values = values
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def _restore(self, ckpt: dict) -> None:
        """Continue exactly where ``last.pt`` stopped."""
        cfg = self.cfg
        missing = [k for k in ("optimizer", "scheduler", "progress", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{self.out / 'last.pt'}: not a resumable checkpoint (no {', '.join(missing)}); "
                                  f"use --init to start a new run from its weights")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{self.out / 'last.pt'}: optimizer/scheduler state does not fit this run "
                                  f"({e}); use --init to start a new run from its weights") from None
        if self.scheduler.total_steps != self.total_steps:
            log(f"note: total steps changed from {self.scheduler.total_steps} to {self.total_steps} "
                f"(--epochs/--iters); the poly schedule is stretched from here on")
            self.scheduler.total_steps = self.total_steps
        pr = ckpt["progress"]
        self.p = Progress(**pr)
        self.best_metrics = ckpt.get("best_metrics")
        if ckpt.get("world_size", 1) != self.world and self.p.batch_in_epoch:
            log(f"note: world size changed ({ckpt.get('world_size')} -> {self.world}); epoch "
                f"{self.p.epoch + 1} restarts from its first batch")
            self.p.batch_in_epoch = 0
        rng = ckpt["rng"]
        restore_rng_state(rng[self.rank] if self.rank < len(rng) else rng[0])
        # Logs: drop what was written after the checkpoint (e.g. steps of a killed run).
        self.metrics_rows = [r for r in _read_jsonl_lenient(self.out / "metrics.jsonl") if r["step"] <= self.p.step]
        if self.main:
            steps = [r for r in _read_jsonl_lenient(self.out / "steps.jsonl") if r["step"] <= self.p.step]
            from fcnseg.fileio import atomic_write_text

            atomic_write_text(self.out / "steps.jsonl", "".join(json.dumps(r) + "\n" for r in steps))
        log(f"resuming {self.out} at step {self.p.step} (epoch {self.p.epoch + 1}, batch "
            f"{self.p.batch_in_epoch}/{self.steps_per_epoch}); best mIoU so far "
            f"{_pct(self.p.best_miou)}")
        if cfg.deterministic is False:
            log("note: without --deterministic the resumed run matches an uninterrupted one only approximately")

    def _write_config(self, resumed: bool) -> None:
        from fcnseg.fileio import atomic_write_text

        doc = {
            "config": self.cfg.to_dict(),
            "resolved": {
                "device": str(self.device), "amp_dtype": str(self.amp_dtype).replace("torch.", "")
                if self.amp_dtype else None,
                "world_size": self.world, "num_classes": self.num_classes,
                "class_names": list(self.train_ds.class_names),
                "train_images": len(self.train_ds), "val_images": len(self.val_ds),
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "epochs": self.n_epochs, "model_config": dict(self.model.fcn_config),
                "class_weights": getattr(self, "class_weight_values", None),
                "resumed_at_step": self.p.step if resumed else None,
            },
            "environment": environment_info(self.device),
        }
        atomic_write_text(self.out / "config.json", json.dumps(doc, indent=1, default=str) + "\n")

    # -- loop ---------------------------------------------------------------------------
    def run(self) -> Path:
        """Set up, train, validate and save; return the run directory."""
        with deterministic_mode(self.cfg.deterministic, self.device.type):
            return self._run()

    def _run(self) -> Path:
        self.setup()
        cfg, p = self.cfg, self.p
        t_start = time.monotonic()
        deadline = t_start + 60 * cfg.max_minutes if cfg.max_minutes else None
        self.steps_file = open(self.out / "steps.jsonl", "a", encoding="utf-8") if self.main else None
        stop_reason = None
        log(f"training {cfg.model} on {cfg.data}: {len(self.train_ds)} train / {len(self.val_ds)} val images, "
            f"{self.num_classes} classes, {self.total_steps} steps ({self.n_epochs} epochs x "
            f"{self.steps_per_epoch}), batch {cfg.batch_size} x {self.world} process(es), device {self.device}"
            f"{', amp ' + str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else ''}")
        try:
            with self.stop.installed():
                while p.step < self.total_steps:
                    stop_reason = self._train_epoch(deadline)
                    if stop_reason is not None and p.step < self.total_steps:
                        break  # end-of-epoch work is left to the resumed run
                    stop_reason = None  # a stop request at the very last step: just finish
                    epoch_done = p.batch_in_epoch >= self.steps_per_epoch
                    if epoch_done:
                        p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                    done = p.step >= self.total_steps
                    if done or (epoch_done and p.epoch % cfg.val_every == 0):
                        self._validate()
                    self._save_last(completed=done)
        finally:
            if self.steps_file is not None:
                self.steps_file.close()
        if stop_reason == "signal":
            self._save_last(completed=False)
            raise TrainingInterrupted(
                f"stopped by {self.stop.name} at step {p.step} (epoch {p.epoch + 1}, batch "
                f"{p.batch_in_epoch}/{self.steps_per_epoch}); resumable checkpoint saved to "
                f"{self.out / 'last.pt'}; continue with `fcnseg train --out {self.out} --resume`",
                self.stop.signum or 0)
        if stop_reason == "time":
            log(f"time budget of {cfg.max_minutes:g} min reached at step {p.step}/{self.total_steps}; "
                f"stopping cleanly")
            # best.pt must reflect the weights we stop with: validate unless just done.
            if p.last_val_step != p.step or not (self.out / "best.pt").exists():
                self._validate(partial=True)
            self._save_last(completed=False)
        self._finish(stop_reason, time.monotonic() - t_start)
        return self.out

    def _train_epoch(self, deadline: float | None) -> str | None:
        """Train the rest of epoch ``p.epoch`` (or up to the step budget).

        Returns ``"signal"`` / ``"time"`` when a stop was requested (after completing that
        step), else None. The caller advances the epoch and validates.
        """
        from tqdm import tqdm

        cfg, p, dev = self.cfg, self.p, self.device
        epoch = p.epoch
        self.sampler.set_epoch(epoch, start=p.batch_in_epoch * cfg.batch_size)
        n_batches = min(self.steps_per_epoch - p.batch_in_epoch, self.total_steps - p.step)
        self.ddp.train()
        loss_sum, n_steps, n_images = 0.0, 0, 0
        lr = self.optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{self.n_epochs}", leave=False, dynamic_ncols=True,
                   disable=(not self.main) or (None if cfg.progress else True))
        it = iter(self.loader)
        try:
            for _ in range(n_batches):
                x, y = next(it)
                x = x.to(dev, non_blocking=True)  # (B, 3, h, w) normalised crops
                y = y.to(dev, non_blocking=True)  # (B, h, w) int64, 255 = ignore
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(dev, self.amp_dtype):
                    logits = self.ddp(x)  # (B, C, h, w)
                loss = segmentation_loss(logits, y, self.class_weights)
                # One host sync per step carries the loss (for the NaN check and the log) and,
                # under DDP, every rank's stop requests, so that all ranks stop after the same
                # step. A stop takes effect after this step's update: stopping between forward
                # and update would leave BatchNorm statistics updated by an untrained batch.
                flags = torch.tensor([float(self.stop.requested),
                                      float(deadline is not None and time.monotonic() > deadline)], device=dev)
                vec = D.all_reduce_(torch.cat([loss.detach().float().reshape(1), flags]))
                loss_value, stop_signal, time_up = vec.tolist()
                loss_value /= self.world
                if not math.isfinite(loss_value):
                    self._diverged(loss_value)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    self.optimizer.step()
                lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used
                self.scheduler.step()
                p.step += 1
                p.batch_in_epoch += 1
                loss_sum += loss_value
                n_steps += 1
                n_images += x.shape[0] * self.world
                if self.steps_file is not None:
                    # repr-exact floats: the resume test compares these bit for bit.
                    self.steps_file.write(json.dumps({"step": p.step, "epoch": epoch + 1, "loss": loss_value,
                                                      "lr": lr}) + "\n")
                    self.steps_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{n_images / (time.perf_counter() - t0):.1f}",
                                refresh=False)
                if stop_signal:
                    return "signal"
                if time_up:
                    return "time"
        finally:
            bar.close()
            del it  # a partly consumed iterator: the loader resets its workers on the next iter()
            seconds = time.perf_counter() - t0
            # For the metrics row of the next validation (also a partial one after --max-minutes).
            self._epoch_stats = {"train_loss": loss_sum / n_steps if n_steps else None,
                                 "images_per_s": n_images / max(seconds, 1e-9), "train_seconds": seconds,
                                 "lr": lr}  # of the epoch's last step
        return None

    def _diverged(self, loss_value: float) -> None:
        p = self.p
        kept = self.out / "last.pt"
        where = f"the last good checkpoint {kept} is kept" if kept.exists() else "no checkpoint had been saved yet"
        amp = f", or disable fp16 (--amp off or bf16)" if self.amp_dtype == torch.float16 else \
            ", or disable mixed precision (--amp off)" if self.amp_dtype is not None else ""
        raise DivergenceError(
            f"training diverged: loss is {loss_value} at step {p.step + 1} (epoch {p.epoch + 1}); the diverged "
            f"weights were not saved and {where}. Try a lower learning rate (--lr, now {self.cfg.lr:g}) or "
            f"--warmup-iters, check the labels (classes 0..{self.num_classes - 1}, 255 = ignore){amp}")

    # -- validation and checkpoints -------------------------------------------------------
    def _validate(self, partial: bool = False) -> dict:
        cfg, p = self.cfg, self.p
        t0 = time.perf_counter()
        res = evaluate(self.model, self.val_loader, self.num_classes, self.device, amp_dtype=self.amp_dtype,
                       channels_last=cfg.channels_last, bf=cfg.bf, progress=cfg.progress)
        epoch = p.epoch + p.batch_in_epoch / self.steps_per_epoch
        stats = getattr(self, "_epoch_stats", {})
        val = {k: res[k] for k in ("pixel_acc", "mean_acc", "miou", "fwiou", "iou", "acc", "bf") if k in res}
        row = {"epoch": round(epoch, 4), "step": p.step, "train_loss": stats.get("train_loss"),
               "lr": stats.get("lr"), "images_per_s": stats.get("images_per_s"), "val": val,
               "val_seconds": time.perf_counter() - t0, "time": time.time()}
        if partial:
            row["partial"] = True
        self.metrics_rows.append(row)
        miou = res["miou"] if math.isfinite(res["miou"]) else -math.inf
        improved = miou > p.best_miou or not (self.out / "best.pt").exists()
        if improved:
            p.best_miou, p.best_epoch = miou, round(epoch, 4)
            self.best_metrics = res
        p.last_val_step = p.step
        if self.main:
            from fcnseg.fileio import atomic_write_text
            from fcnseg.report import plot_training_curve

            if improved:
                self._save("best.pt", metrics=res)
            atomic_write_text(self.out / "metrics.jsonl",
                              "".join(json.dumps(json_safe(r)) + "\n" for r in self.metrics_rows))
            plot_training_curve(self.metrics_rows, self.out / "train_curve.png")
        loss = stats.get("train_loss")
        loss_text = "n/a" if loss is None else f"{loss:.4f}"
        log(f"epoch {_fmt_epoch(epoch)}/{self.n_epochs} step {p.step}: train loss {loss_text}, "
            f"{stats.get('images_per_s', 0):.1f} img/s | val mIoU {_pct(res['miou'])}, pixel acc "
            f"{_pct(res['pixel_acc'])}, mean acc {_pct(res['mean_acc'])}"
            f"{', BF ' + _pct(res['bf']) if 'bf' in res else ''} (best {_pct(p.best_miou)})"
            f"{' *' if improved else ''}")
        return res

    def _save(self, name: str, *, metrics: dict | None = None, **extra: Any) -> None:
        """Write ``name`` in the run dir (atomically) with the checkpoint fields + ``extra``."""
        from fcnseg.checkpoint import save_checkpoint

        fields: dict[str, Any] = {
            "class_names": list(self.train_ds.class_names),
            "palette": [list(c) for c in self.train_ds.palette],
            "epoch": self.p.epoch, "step": self.p.step,  # completed epochs, optimizer steps
            "best_miou": self.p.best_miou if math.isfinite(self.p.best_miou) else None,
            "metrics": metrics, "config": self.cfg.to_dict(),
        }
        fields.update(extra)
        save_checkpoint(self.out / name, self.model, **fields)

    def _save_last(self, completed: bool) -> None:
        # RNG states of every rank (dropout streams differ per rank): gathered, saved by rank 0.
        rng = _all_gather_object(capture_rng_state())
        if self.main:
            self._save("last.pt", metrics=self.metrics_rows[-1]["val"] if self.metrics_rows else None,
                       optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                       scaler=self.scaler.state_dict() if self.scaler is not None else None, rng=rng,
                       progress=dataclasses.asdict(self.p), best_metrics=self.best_metrics,
                       world_size=self.world, completed=completed)
        D.barrier()

    def _finish(self, stop_reason: str | None, seconds: float) -> None:
        if not self.main:
            return
        from fcnseg.fileio import atomic_write_text
        from fcnseg.report import plot_confusion_matrix

        p = self.p
        files = {"best": self.out / "best.pt", "last": self.out / "last.pt",
                 "metrics": self.out / "metrics.jsonl", "curve": self.out / "train_curve.png"}
        if self.best_metrics is not None:
            files["confusion_matrix"] = plot_confusion_matrix(
                self.best_metrics["confusion_matrix"], self.train_ds.class_names,
                self.out / "confusion_matrix.png",
                title=f"{self.cfg.model}, best epoch {_fmt_epoch(p.best_epoch)}")
        summary = {"model": self.cfg.model, "best_miou": p.best_miou if math.isfinite(p.best_miou) else None,
                   "best_epoch": p.best_epoch, "steps": p.step, "total_steps": self.total_steps,
                   "completed": p.step >= self.total_steps, "stopped": stop_reason, "seconds": seconds,
                   "files": {k: str(v) for k, v in files.items()}}
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1) + "\n")
        status = "finished" if summary["completed"] else f"stopped ({stop_reason})"
        print(f"{status}: {p.step}/{self.total_steps} steps in {seconds / 60:.1f} min; best val mIoU "
              f"{_pct(p.best_miou)} at epoch {_fmt_epoch(p.best_epoch)}\n"
              f"  best: {files['best']}\n  last: {files['last']} (resumable)\n"
              f"  metrics: {files['metrics']}, curve: {files['curve']}"
              + (f", confusion matrix: {files['confusion_matrix']}" if "confusion_matrix" in files else ""),
              flush=True)


def _train_staged(cfg: TrainConfig, device: torch.device) -> Path:
    """FCN-32s -> 16s -> 8s: each stage in ``out/<stage>``, initialised from the previous best."""
    from fcnseg.fileio import atomic_write_text

    top = Path(cfg.out)
    _on_main(lambda: _prepare_run_dir(top, resume=cfg.resume, overwrite=cfg.overwrite, needs="config.json"))
    D.barrier()
    if D.is_main_process():
        atomic_write_text(top / "config.json", json.dumps({"config": cfg.to_dict(),
                                                           "environment": environment_info(device)},
                                                          indent=1, default=str) + "\n")
    _, backbone = split_model_name(cfg.model)
    prev = cfg.init
    t0 = time.monotonic()
    stages = cfg.stages or []
    finals: dict[str, float | None] = {}
    for i, stage in enumerate(stages):
        sub_dir = top / stage
        if cfg.resume and _stage_summary(sub_dir).get("completed"):
            log(f"stage {stage}: already complete ({sub_dir}), skipping")
        else:
            # --max-minutes is a budget for all stages together.
            left = None if cfg.max_minutes is None else cfg.max_minutes - (time.monotonic() - t0) / 60
            if left is not None and left <= 0:
                log(f"time budget of {cfg.max_minutes:g} min used up before stage {stage}; "
                    f"continue with `fcnseg train --out {top} --resume`")
                break
            resume = cfg.resume and (sub_dir / "last.pt").is_file()
            sub = dataclasses.replace(cfg, model=f"fcn{stage}_{backbone}", out=str(sub_dir), stages=None, init=prev,
                                      backbone_weights=cfg.backbone_weights if prev is None else None,
                                      resume=resume, overwrite=not resume, max_minutes=left)
            log(f"== stage {i + 1}/{len(stages)}: {sub.model} -> {sub_dir}")
            Trainer(resolve(sub), device).run()
        finals[stage] = _stage_summary(sub_dir).get("best_miou")
        prev = str(sub_dir / "best.pt")
        if not _stage_summary(sub_dir).get("completed"):
            break  # stopped by the time budget: the next stage must not start from a half-trained one
    if D.is_main_process():
        complete = len(finals) == len(stages) and _stage_summary(top / stages[-1]).get("completed", False)
        atomic_write_text(top / "summary.json", json.dumps({"stages": finals, "best": prev, "completed": complete},
                                                           indent=1) + "\n")
        print(f"staged training {'done' if complete else 'stopped'}: "
              + ", ".join(f"{s} mIoU {_pct(m)}" for s, m in finals.items()) + f"; latest model {prev}", flush=True)
    return top


def _stage_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# ----------------------------------------------------------------------------- helpers

def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def _fmt_epoch(e: float | None) -> str:
    """``3`` for whole epochs, ``2.35`` for a run stopped part-way through one."""
    return "n/a" if e is None else f"{e:g}" if float(e).is_integer() else f"{e:.2f}"


def _read_jsonl_lenient(path: Path) -> list[dict]:
    """Rows of a log that a kill may have cut mid-line: a broken last line is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _all_gather_object(obj: Any) -> list[Any]:
    if not D.is_dist():
        return [obj]
    out: list[Any] = [None] * D.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- CLI

def _parse_kv(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, _parse_value(value)


def _parse_value(value: str) -> Any:
    """'8' -> 8, '0.5' -> 0.5, 'true' -> True, '2,2,3,2' -> [2, 2, 3, 2], else the string."""
    if "," in value:
        return [_parse_value(v) for v in value.split(",")]
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(value.lower(), value)


def _parse_crop(text: str) -> int | list[int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    return parts[0] if len(parts) == 1 else parts


CLI_EPILOG = """\
examples:
  fcnseg train --data VOC2012 --model fcn8s_vgg16 --backbone-weights vgg16-397923af.pth --out runs/voc
  fcnseg train --data VOC2012 --model fcn8s_vgg16 --stages 32s,16s,8s --out runs/staged
  fcnseg train --out runs/voc --resume            # continue an interrupted run exactly
  torchrun --nproc_per_node 4 -m fcnseg.cli train --data VOC2012 --out runs/ddp ...

exit codes: 0 done (also when --max-minutes ran out: resumable), 2 error (one line),
130 / 143 stopped by SIGINT / SIGTERM after saving a resumable last.pt.
"""


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    # Defaults are None so that --resume can tell what was given from what to take from the run.
    d = TrainConfig(data="", out="")
    p.epilog, p.formatter_class = CLI_EPILOG, argparse.RawDescriptionHelpFormatter
    g = p.add_argument_group("data and model")
    g.add_argument("--data", help="dataset root (VOC layout or images/ + masks/)")
    g.add_argument("--out", required=True, help="run directory")
    g.add_argument("--model", help=f"model name, see `fcnseg models` (default {d.model})")
    g.add_argument("--model-arg", action="append", type=_parse_kv, metavar="KEY=VALUE", dest="model_kwargs",
                   help="extra model option, e.g. width=8 for *_small (repeatable)")
    g.add_argument("--geometry", choices=["modern", "caffe"], help=f"network geometry (default {d.geometry})")
    g.add_argument("--backbone-weights", metavar="PATH", help="ImageNet backbone weights (torchvision layout)")
    g.add_argument("--init", metavar="CKPT", help="start from this fcnseg checkpoint (32s/16s upgraded if needed)")
    g.add_argument("--stages", type=lambda s: [v.strip() for v in s.split(",") if v.strip()], metavar="32s,16s,8s",
                   help="staged training with --model's backbone: one sub-directory per stage, each "
                        "initialised from the previous stage's best.pt")
    g.add_argument("--train-split", help=f"default {d.train_split}")
    g.add_argument("--sbd", metavar="DIR", help="add SBD's masks (benchmark_RELEASE/dataset) to the "
                                                "VOC train split, minus VOC val (the paper's setup)")
    g.add_argument("--val-split", help=f"default {d.val_split}")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], help="sgd (momentum 0.9, the paper) or adamw")
    g.add_argument("--lr", type=float, help="base learning rate (default 0.01 sgd, 1e-4 adamw)")
    g.add_argument("--weight-decay", type=float, help="default 5e-4 sgd, 1e-2 adamw")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    g.add_argument("--poly-power", type=float, help=f"poly schedule power (default {d.poly_power})")
    g.add_argument("--warmup-iters", type=int, help="linear warmup steps (default 0)")
    g.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    g.add_argument("--iters", type=int, help="total optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, help=f"crops per step per process (default {d.batch_size})")
    g.add_argument("--val-batch-size", type=int, help="full-size images per validation batch (default 1)")
    g.add_argument("--crop-size", type=_parse_crop, metavar="N|HxW", help=f"default {d.crop_size}")
    g.add_argument("--class-weights", metavar="none|median-freq|FILE",
                   help="loss class weights: none, median-frequency balancing, or a file of numbers")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, help=f"data-loading processes (default {d.workers})")
    g.add_argument("--amp", choices=AMP_MODES, help="mixed precision (default auto)")
    g.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    g.add_argument("--seed", type=int, help="default 0")
    g.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic algorithms: bit-identical runs on CPU")
    g.add_argument("--resume", action="store_true", default=None, help="continue the run in --out from last.pt")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run in --out")
    g.add_argument("--max-minutes", type=float, help="time budget; stops cleanly (resumable) when reached")
    g.add_argument("--val-every", type=int, help="validate every N epochs (default 1)")
    g.add_argument("--bf", action="store_true", default=None, help="also compute the BF score at validation")
    g.add_argument("--no-progress", action="store_false", dest="progress", default=None,
                   help="no progress bar")


def load_run_config(run_dir: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The config of an existing run (its ``config.json``), for resuming it: ``train(load_run_config(d,
    resume=True))``. ``resume``, ``overwrite`` and ``max_minutes`` are per invocation and not inherited."""
    saved = Path(run_dir) / "config.json"
    if not saved.is_file():
        raise ConfigError(f"--resume: {saved} not found; is {run_dir} a run directory?")
    try:
        base = json.loads(saved.read_text(encoding="utf-8"))["config"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"--resume: {saved} is not a valid run config") from None
    for key in ("resume", "overwrite", "max_minutes"):
        base.pop(key, None)
    return TrainConfig.from_dict({**dataclasses.asdict(TrainConfig(data="", out="")), **base, **overrides})


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Options given on the command line, over the run's saved config (``--resume``) or the defaults."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    if args.resume:
        return load_run_config(args.out, **given)
    return TrainConfig.from_dict({**dataclasses.asdict(TrainConfig(data="", out="")), **given})


def cli_main(args: argparse.Namespace) -> int:
    try:
        train(config_from_args(args))
    except TrainingInterrupted as e:
        print(f"fcnseg train: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0
