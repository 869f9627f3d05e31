"""One training run (or one stage of a staged run): set-up, the loop, validation, checkpoints.

:class:`Trainer` is driven by :func:`fcnseg.engine.train.train` (and, stage by stage, by
:mod:`fcnseg.engine.staged`). Its files are described in :mod:`fcnseg.engine.run_dir`; its
reliability guarantees (exact resume, clean stops, divergence) in :mod:`fcnseg.engine.train`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fcnseg.data import datasets
from fcnseg.data.splits import SPLIT_FILES, prepare_holdout_files
from fcnseg.data.transforms import eval_transforms, pad_collate, train_transforms
from fcnseg.engine import distributed as D
from fcnseg.engine.config import TrainConfig, check_resume_compatible
from fcnseg.engine.evaluate import evaluate, make_eval_loader
from fcnseg.engine.loader_errors import shut_down_workers, unwrapped_batches
from fcnseg.engine.finetune import set_backbone_mode
from fcnseg.engine.losses import load_class_weights, median_frequency_weights, pixel_frequencies, segmentation_loss
from fcnseg.engine.model_setup import initial_model
from fcnseg.engine.optim import PolyLR, build_optimizer
from fcnseg.engine.resume import Progress, restore_training_state, training_state
from fcnseg.engine.rng import capture_rng_state, deterministic_mode, seed_everything
from fcnseg.engine.run_dir import prepare_run_dir, trim_logs, write_json
from fcnseg.engine.runtime import amp_choice, amp_name, autocast, environment_info, recorded_amp, resolve_amp
from fcnseg.engine.sampling import ResumableSampler, SeededDataset, worker_init
from fcnseg.engine.signals import StopRequest, TrainingInterrupted
from fcnseg.errors import ConfigError, DataError, DivergenceError, FcnsegError
from fcnseg.jsonl import write_jsonl
from fcnseg.sizes import size_pair
from fcnseg.plots import plot_confusion_matrix, plot_training_curve


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
        self._fresh_split = False  # --val-fraction split files written by this start (removed if it is refused)

    def setup(self) -> None:
        cfg, dev = self.cfg, self.device
        # Before any work: the run dir is new (or --overwrite / --resume), writable, not full.
        D.run_on_main(lambda: prepare_run_dir(self.out, resume=cfg.resume, overwrite=cfg.overwrite))
        D.barrier()
        seed_everything(cfg.seed)  # same on every rank: identical initial weights

        train_split, val_split = cfg.train_split, cfg.val_split
        if cfg.val_fraction is not None:  # split files written to (or, resuming, read from) the run dir
            done = D.run_on_main(lambda: prepare_holdout_files(cfg.data, cfg.train_split, cfg.val_fraction,
                                                               cfg.seed, self.out, resume=cfg.resume))
            D.barrier()
            train_split, val_split = (str(self.out / name) for name in SPLIT_FILES)
            if done:  # rank 0
                D.log_main(done[2])
                self._fresh_split = done[3]
        # Through the module: tests replace datasets.open_dataset to see when it is called.
        self.train_ds = datasets.open_dataset(cfg.data, train_split,
                                              transforms=train_transforms(cfg.crop_size, scale=tuple(cfg.scale)
                                                                          if cfg.scale else None,
                                                                          color_jitter=cfg.color_jitter),
                                              sbd_root=cfg.sbd, mask_255=cfg.mask_255)  # SBD: train_aug minus VOC val
        self.val_ds = datasets.open_dataset(cfg.data, val_split, transforms=eval_transforms(), mask_255=cfg.mask_255)
        if len(self.train_ds) == 0 or len(self.val_ds) == 0:
            raise ConfigError(f"--data {cfg.data}: split {train_split!r} or {val_split!r} is empty")
        self.num_classes = self.train_ds.num_classes
        if self.val_ds.num_classes != self.num_classes:
            raise ConfigError(f"--data {cfg.data}: train and val splits disagree on the number of classes")
        if self.num_classes < 2:
            raise DataError(f"--data {cfg.data}: the masks have a single class ({self.train_ds.class_names[0]!r}): "
                            f"nothing to learn (loss 0, mIoU 100%). If mask value 255 is a class (0/255 masks), "
                            f"pass --mask-255 class; otherwise list every class in {Path(cfg.data) / 'class_names.txt'}")

        resume_ckpt = None
        if cfg.resume:
            last = self.out / "last.pt"
            resume_ckpt = load_checkpoint(last)  # weights_only: refuses pickled code
            check_resume_compatible(cfg, resume_ckpt.get("config", {}), str(last))
            model = model_from_checkpoint(resume_ckpt, num_classes=self.num_classes, name=cfg.model,
                                          source=str(last))
        else:
            model = initial_model(cfg, self.num_classes)
        model.to(dev)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model

        self.class_weights = self._class_weights()
        # A resumed run keeps the dtype it started with (auto is measured, and may differ now).
        self.amp_dtype = resolve_amp(cfg.amp, dev, recorded=recorded_amp(resume_ckpt, self.out), model=model,
                                     size=size_pair(cfg.crop_size), batch=cfg.batch_size)  # the step it will run
        # GradScaler only for fp16 (bf16 has fp32's exponent range: no underflow to fix).
        self.scaler = torch.amp.GradScaler(dev.type) if self.amp_dtype == torch.float16 else None

        self.sampler = ResumableSampler(len(self.train_ds), seed=cfg.seed, rank=self.rank, world_size=self.world)
        workers = cfg.workers
        # A last batch of one image would make BatchNorm fail wherever a map is 1x1 (small crops)
        # and gives a noisy step anyway: it is left out (a different image each epoch: the shuffle).
        drop_last = cfg.batch_size > 1 and self.sampler.shard_len % cfg.batch_size == 1
        if drop_last:
            D.log_main(f"note: {self.sampler.shard_len} training images per epoch in batches of {cfg.batch_size}: "
                       f"the last one-image batch of each epoch is left out (BatchNorm needs 2 samples)")
        self.loader = DataLoader(
            SeededDataset(self.train_ds), batch_size=cfg.batch_size, sampler=self.sampler,
            num_workers=workers, collate_fn=pad_collate, pin_memory=dev.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=worker_init, generator=torch.Generator(), drop_last=drop_last)
        self.val_loader = make_eval_loader(self.val_ds, batch_size=cfg.val_batch_size, workers=min(workers, 2),
                                           device=dev, persistent=True)
        self.steps_per_epoch = (self.sampler.shard_len // cfg.batch_size if drop_last
                                else math.ceil(self.sampler.shard_len / cfg.batch_size))
        self.total_steps = cfg.iters or cfg.epochs * self.steps_per_epoch
        self.n_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        self.optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum,
                                         backbone_lr_mult=cfg.backbone_lr_mult)
        self.scheduler = PolyLR(self.optimizer, self.total_steps, power=cfg.poly_power,
                                warmup_steps=cfg.warmup_iters)
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        else:
            # Training RNG streams (dropout) differ per rank; the init above was shared.
            seed_everything(int(np.random.SeedSequence([cfg.seed, self.rank, 1]).generate_state(1)[0]))
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None,
                # a frozen backbone's parameters get no gradient in the first epochs
                find_unused_parameters=cfg.freeze_backbone_epochs > 0)
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

            values = D.run_on_main(compute)  # reads every training mask once, on rank 0
            values = D.broadcast_object(values)
        else:
            values = load_class_weights(cfg.class_weights, self.num_classes).tolist()
        self.class_weight_values = values
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def _restore(self, ckpt: dict) -> None:
        """Continue exactly where ``last.pt`` stopped."""
        self.p, self.best_metrics = restore_training_state(
            ckpt, self.out / "last.pt", optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            total_steps=self.total_steps, rank=self.rank, world_size=self.world)
        # Logs: drop what was written after the checkpoint (e.g. steps of a killed run).
        self.metrics_rows = trim_logs(self.out, self.p.step, rewrite_steps=self.main)
        D.log_main(f"resuming {self.out} at step {self.p.step} (epoch {self.p.epoch + 1}, batch "
                   f"{self.p.batch_in_epoch}/{self.steps_per_epoch}); best mIoU so far {pct(self.p.best_miou)}")
        if self.cfg.deterministic is False:
            D.log_main("note: without --deterministic the resumed run matches an uninterrupted one only approximately")

    def _write_config(self, resumed: bool) -> None:
        doc = {
            "config": self.cfg.to_dict(),
            "resolved": {
                "device": str(self.device), "amp_dtype": str(self.amp_dtype).replace("torch.", "")
                if self.amp_dtype else None,
                "amp_choice": amp_choice(self.cfg.amp, self.device, resumed, self.model,
                                         size_pair(self.cfg.crop_size), self.cfg.batch_size),
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
        write_json(self.out / "config.json", doc)

    def run(self) -> Path:
        """Set up, train, validate and save; return the run directory."""
        with deterministic_mode(self.cfg.deterministic, self.device.type):
            return self._run()

    def _run(self) -> Path:
        try:
            self.setup()
        except FcnsegError:
            if self._fresh_split:  # a refused start leaves the run dir as it found it
                for name in SPLIT_FILES:
                    (self.out / name).unlink(missing_ok=True)
            raise
        cfg, p = self.cfg, self.p
        t_start = time.monotonic()
        deadline = t_start + 60 * cfg.max_minutes if cfg.max_minutes else None
        self.steps_file = open(self.out / "steps.jsonl", "a", encoding="utf-8") if self.main else None
        stop_reason = None
        D.log_main(f"training {cfg.model} on {cfg.data}: {len(self.train_ds)} train / {len(self.val_ds)} val images, "
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
        except BaseException:
            # Persistent workers ignore SIGTERM (sampling.worker_init): stop them here, or the
            # interpreter's exit would wait for them forever.
            shut_down_workers(self.loader)
            shut_down_workers(self.val_loader)
            raise
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
            D.log_main(f"time budget of {cfg.max_minutes:g} min reached at step {p.step}/{self.total_steps}; "
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
        cfg, p, dev = self.cfg, self.p, self.device
        epoch = p.epoch
        self.sampler.set_epoch(epoch, start=p.batch_in_epoch * cfg.batch_size)
        n_batches = min(self.steps_per_epoch - p.batch_in_epoch, self.total_steps - p.step)
        self.ddp.train()
        set_backbone_mode(self.model, frozen=epoch < cfg.freeze_backbone_epochs, bn=cfg.bn)
        loss_sum, n_steps, n_images = 0.0, 0, 0
        # The last group is the head's, at the base rate (--lr); a backbone's may be scaled down.
        lr = self.optimizer.param_groups[-1]["lr"]
        t0 = time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{self.n_epochs}", leave=False, dynamic_ncols=True,
                   disable=(not self.main) or (None if cfg.progress else True))
        it = unwrapped_batches(self.loader)  # a worker's DataError reaches the user as one line
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
                lr = self.optimizer.param_groups[-1]["lr"]  # the base lr this step used
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

    def _validate(self, partial: bool = False) -> dict:
        cfg, p = self.cfg, self.p
        t0 = time.perf_counter()
        D.broadcast_buffers_(self.model)  # every rank evaluates the model rank 0 saves
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
            if improved:
                self._save("best.pt", metrics=res)
            write_jsonl(self.out / "metrics.jsonl", self.metrics_rows, strict=True)
            plot_training_curve(self.metrics_rows, self.out / "train_curve.png")
        loss = stats.get("train_loss")
        loss_text = "n/a" if loss is None else f"{loss:.4f}"
        D.log_main(f"epoch {fmt_epoch(epoch)}/{self.n_epochs} step {p.step}: train loss {loss_text}, "
            f"{stats.get('images_per_s', 0):.1f} img/s | val mIoU {pct(res['miou'])}, pixel acc "
            f"{pct(res['pixel_acc'])}, mean acc {pct(res['mean_acc'])}"
            f"{', BF ' + pct(res['bf']) if 'bf' in res else ''} (best {pct(p.best_miou)})"
            f"{' *' if improved else ''}")
        return res

    def _save(self, name: str, *, metrics: dict | None = None, **extra: Any) -> None:
        """Write ``name`` in the run dir (atomically) with the checkpoint fields + ``extra``."""
        fields: dict[str, Any] = {
            "class_names": list(self.train_ds.class_names),
            "palette": [list(c) for c in self.train_ds.palette],
            "epoch": self.p.epoch, "step": self.p.step,  # completed epochs, optimizer steps
            "best_miou": self.p.best_miou if math.isfinite(self.p.best_miou) else None,
            "metrics": metrics, "config": self.cfg.to_dict(),
            "amp_dtype": amp_name(self.amp_dtype),  # what --resume continues in
        }
        fields.update(extra)
        save_checkpoint(self.out / name, self.model, **fields)

    def _save_last(self, completed: bool) -> None:
        # RNG states of every rank (dropout streams differ per rank): gathered, saved by rank 0.
        rng = D.all_gather_object(capture_rng_state())
        if self.main:
            self._save("last.pt", metrics=self.metrics_rows[-1]["val"] if self.metrics_rows else None,
                       **training_state(self.p, self.optimizer, self.scheduler, self.scaler, rng,
                                        self.best_metrics, self.world, completed))
        D.barrier()

    def _finish(self, stop_reason: str | None, seconds: float) -> None:
        if not self.main:
            return
        p = self.p
        files = {"best": self.out / "best.pt", "last": self.out / "last.pt",
                 "metrics": self.out / "metrics.jsonl", "curve": self.out / "train_curve.png"}
        if self.best_metrics is not None:
            files["confusion_matrix"] = plot_confusion_matrix(
                self.best_metrics["confusion_matrix"], self.train_ds.class_names,
                self.out / "confusion_matrix.png",
                title=f"{self.cfg.model}, best epoch {fmt_epoch(p.best_epoch)}")
        summary = {"model": self.cfg.model, "best_miou": p.best_miou if math.isfinite(p.best_miou) else None,
                   "best_epoch": p.best_epoch, "steps": p.step, "total_steps": self.total_steps,
                   "completed": p.step >= self.total_steps, "stopped": stop_reason, "seconds": seconds,
                   "files": {k: str(v) for k, v in files.items()}}
        write_json(self.out / "summary.json", summary)
        status = "finished" if summary["completed"] else f"stopped ({stop_reason})"
        print(f"{status}: {p.step}/{self.total_steps} steps in {seconds / 60:.1f} min; best val mIoU "
              f"{pct(p.best_miou)} at epoch {fmt_epoch(p.best_epoch)}\n"
              f"  best: {files['best']}\n  last: {files['last']} (resumable)\n"
              f"  metrics: {files['metrics']}, curve: {files['curve']}"
              + (f", confusion matrix: {files['confusion_matrix']}" if "confusion_matrix" in files else ""),
              flush=True)


def pct(v: float | None) -> str:
    """A score as a percentage for the log (``n/a`` when undefined)."""
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def fmt_epoch(e: float | None) -> str:
    """``3`` for whole epochs, ``2.35`` for a run stopped part-way through one."""
    return "n/a" if e is None else f"{e:g}" if float(e).is_integer() else f"{e:.2f}"
