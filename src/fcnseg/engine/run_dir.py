"""The run directory of ``fcnseg train``: what it holds, preparing it, and reading it back.

Run directory (a staged run has one per stage, ``<out>/32s``, ``<out>/16s``, ``<out>/8s``,
plus its own ``config.json`` and ``summary.json``)::

    config.json        resolved config + code version (fcnseg, git describe) + torch/threads/device
    metrics.jsonl      one line per validation: epoch, step, train_loss, lr, images_per_s, val{...}, time
    steps.jsonl        one line per optimizer step: step, epoch, loss, lr (exact floats)
    train_curve.png    train loss and val mIoU vs epoch
    confusion_matrix.png  of the best epoch (row-normalised)
    best.pt            best val mIoU (weights + class names/palette + metrics)
    last.pt            resumable: + optimizer, scheduler, grad scaler, RNG states, position in the epoch
    summary.json       best mIoU, steps, why the run stopped
    train.txt, val.txt with --val-fraction: the held-out split (reused by --resume)
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from fcnseg.engine.config import FINETUNE_BEFORE_OPTIONS, STAGES, TrainConfig
from fcnseg.errors import ConfigError
from fcnseg.jsonl import read_jsonl, write_jsonl
from fcnseg.outputs import atomic_write_text, prepare_output_dir

# Files a run writes; --overwrite removes exactly these (and stage sub-directories' copies).
RUN_FILES = ("config.json", "metrics.jsonl", "steps.jsonl", "train_curve.png", "confusion_matrix.png",
             "best.pt", "last.pt", "summary.json", "train.txt", "val.txt")


def prepare_run_dir(out: Path, *, resume: bool, overwrite: bool, needs: str = "last.pt") -> None:
    """Check, before any work, that ``out`` can take the run: new (or ``overwrite``: the old
    run's files are removed), or holding ``needs`` for ``resume``; writable, with free space."""
    if resume:
        if not (out / needs).is_file():
            if (out / "config.json").is_file():  # a run that crashed before writing `needs`
                raise ConfigError(f"no {needs} in {out}: the run stopped before its first checkpoint, so there "
                                  f"is nothing to resume; start it again with your original command plus "
                                  f"--overwrite (without --resume)")
            raise ConfigError(f"--resume: {out / needs} not found; nothing to resume (start without --resume)")
        prepare_output_dir(out, overwrite=True, what="run")  # writable, enough free space
        return
    if not overwrite and out.is_dir() and any(out.iterdir()):
        # Say the one thing that works for what is there (prepare_output_dir would say --overwrite).
        if (out / needs).is_file():
            raise ConfigError(f"run directory {out} already holds results; pass --overwrite to replace them, "
                              f"continue that run with `fcnseg train --out {out} --resume`, or choose "
                              f"another --out")
        if (out / "config.json").is_file():
            raise ConfigError(f"run directory {out} holds a run that stopped before its first checkpoint (no "
                              f"{needs}), so it cannot be resumed: pass --overwrite to start it again, or "
                              f"choose another --out")
    prepare_output_dir(out, overwrite=overwrite, what="run")
    if overwrite:
        for sub in (out, *(out / s for s in STAGES)):
            for name in RUN_FILES:
                (sub / name).unlink(missing_ok=True)


def write_json(path: Path, doc: dict) -> None:
    """``config.json`` / ``summary.json``: indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(doc, indent=1, default=str) + "\n")


def read_summary(run_dir: Path) -> dict:
    """The run's ``summary.json``, or ``{}`` if it has none (not finished, or never started)."""
    path = run_dir / "summary.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def trim_logs(out: Path, step: int, *, rewrite_steps: bool) -> list[dict]:
    """On resume: the ``metrics.jsonl`` rows up to ``step`` (what a killed run wrote after its
    checkpoint is dropped); with ``rewrite_steps`` (the main process), ``steps.jsonl`` is cut too."""
    if rewrite_steps:
        steps = [r for r in read_jsonl(out / "steps.jsonl", lenient=True) if r["step"] <= step]
        write_jsonl(out / "steps.jsonl", steps)
    return [r for r in read_jsonl(out / "metrics.jsonl", lenient=True) if r["step"] <= step]


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
    base = {**FINETUNE_BEFORE_OPTIONS, **base}  # a run from before the fine-tuning options
    return TrainConfig.from_dict({**dataclasses.asdict(TrainConfig(data="", out="")), **base, **overrides})
