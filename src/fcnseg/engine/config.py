"""The training configuration (:class:`TrainConfig`) and its validation.

``fcnseg train`` fills a :class:`TrainConfig` from its options; :func:`fcnseg.engine.train.train`
takes one. The resolved config (defaults filled in) is written to the run's ``config.json``
and stored in every checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcnseg.data.mask_255 import check_mode as check_mask_255
from fcnseg.engine.optim import DEFAULT_LR, DEFAULT_WEIGHT_DECAY
from fcnseg.engine.runtime import AMP_MODES
from fcnseg.engine.workers import default_workers
from fcnseg.errors import ConfigError, DataError
from fcnseg.models import list_models
from fcnseg.weights.catalog import is_weights_name

# fcn8s_vgg16 -> head "8s", backbone "vgg16"; unet_resnet18 -> head "unet", backbone "resnet18"
MODEL_NAME = re.compile(r"(?:fcn(?P<stride>32|16|8)s|(?P<unet>unet))_(?P<backbone>\w+)")
STAGES = ("32s", "16s", "8s")

# Fine-tuning defaults when a pretrained backbone is given (--backbone-weights), chosen on a
# held-out part of camvid-voc's train split (benchmarks/camvid_transfer.py), never on val.
FINETUNE_DEFAULTS: dict[str, Any] = {"backbone_lr_mult": 0.1, "bn": "train", "color_jitter": 0.2}
# What runs saved before these options existed trained with: a resumed old run keeps it.
FINETUNE_BEFORE_OPTIONS: dict[str, Any] = {"backbone_lr_mult": 1.0, "bn": "train", "freeze_backbone_epochs": 0,
                                           "color_jitter": 0.0}

# Settings that define the optimisation trajectory: a resumed run must keep them.
RESUME_IDENTITY = ("model", "model_kwargs", "geometry", "optimizer", "lr", "weight_decay", "momentum",
                   "poly_power", "warmup_iters", "batch_size", "crop_size", "scale", "seed", "deterministic",
                   "class_weights", "amp", "channels_last", "train_split", "sbd", "mask_255", "val_fraction",
                   "backbone_lr_mult", "bn", "freeze_backbone_epochs", "color_jitter")


@dataclass
class TrainConfig:
    """Everything that defines a training run (see ``fcnseg train --help``)."""

    data: str
    out: str
    model: str = "fcn8s_vgg16"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra build_model kwargs, e.g. width
    geometry: str = "modern"
    backbone_weights: str | None = None
    init: str | None = None  # fcnseg checkpoint to start from (upgraded 32s -> 16s -> 8s if needed)
    stages: list[str] | None = None  # e.g. ["32s", "16s", "8s"]: staged training in sub-directories
    train_split: str = "train"
    sbd: str | None = None  # SBD's benchmark_RELEASE/dataset: its masks join the VOC train split
    val_split: str = "val"
    val_fraction: float | None = None  # hold out this fraction of the train pool (split files in the run dir)
    mask_255: str | None = None  # what mask value 255 means: "ignore" | "class"; None refuses 0/255-only masks
    optimizer: str = "sgd"
    lr: float | None = None  # None -> DEFAULT_LR[optimizer]
    weight_decay: float | None = None  # None -> DEFAULT_WEIGHT_DECAY[optimizer]
    momentum: float = 0.9
    poly_power: float = 0.9
    warmup_iters: int = 0
    epochs: int = 50
    iters: int | None = None  # when set, overrides epochs
    batch_size: int = 8
    val_batch_size: int = 1
    crop_size: int | list[int] = 320  # int or [h, w]
    scale: list[float] | None = field(default_factory=lambda: [0.5, 2.0])  # random rescaling range
    workers: int = field(default_factory=default_workers)  # usable CPUs - 1
    class_weights: str = "none"  # none | median-freq | path to a file of weights
    # Fine-tuning. None/"auto" are resolved from whether --backbone-weights is given (see resolve()).
    backbone_lr_mult: float | None = None  # backbone lr = lr * this
    bn: str = "auto"  # backbone BatchNorm: "train" (batch statistics) | "frozen" (running statistics kept)
    freeze_backbone_epochs: int = 0  # backbone weights fixed for the first N epochs (the head learns first)
    color_jitter: float | None = None  # brightness/contrast/saturation strength (0 = off)
    amp: str = "auto"
    channels_last: bool = False
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    resume: bool = False
    overwrite: bool = False
    max_minutes: float | None = None
    val_every: int = 1  # validate every N epochs (and always after the last one)
    bf: bool = False  # also compute the boundary F1 score at validation
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown training setting(s) {sorted(unknown)}")
        return cls(**d)


def split_model_name(name: str) -> tuple[str, str]:
    """``"fcn8s_vgg16"`` -> ``("8s", "vgg16")``; ``"unet_resnet18"`` -> ``("unet", "resnet18")``."""
    m = MODEL_NAME.fullmatch(name)
    if not m:
        raise ConfigError(f"model name {name!r} is not of the form fcn{{32,16,8}}s_<backbone> or unet_<backbone>")
    return ("unet" if m["unet"] else f"{m['stride']}s"), m["backbone"]


def check_scale(scale: list[float]) -> None:
    """``--scale LO,HI``: two finite factors with 0 < LO <= HI, else ConfigError naming the fix."""
    if len(scale) != 2 or not all(math.isfinite(v) and v > 0 for v in scale) or scale[0] > scale[1]:
        raise ConfigError(f"--scale {','.join(f'{v:g}' for v in scale)}: expected LO,HI with 0 < LO <= HI "
                          f"(e.g. 0.5,2), or none")


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Check every setting cheaply (before any work) and fill in defaults; returns a copy."""
    cfg = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs),
                              stages=list(cfg.stages) if cfg.stages else None)
    if not cfg.data:
        raise ConfigError("--data DIR is required (a dataset root: VOC layout or images/ + masks/); only "
                          "--resume takes it from the run")
    if not Path(cfg.data).is_dir():
        raise DataError(f"--data {cfg.data}: no such directory; point it at a dataset root "
                        f"(VOC layout or images/ + masks/)")
    if not cfg.out:
        raise ConfigError("--out is required (the run directory)")
    models = list_models()
    if cfg.model not in models:
        close = difflib.get_close_matches(cfg.model, models, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown --model {cfg.model!r}; {hint}available: {', '.join(models)}")
    if cfg.optimizer not in DEFAULT_LR:
        raise ConfigError(f"unknown --optimizer {cfg.optimizer!r}; choose sgd or adamw")
    if cfg.lr is None:
        cfg.lr = DEFAULT_LR[cfg.optimizer]
    if cfg.weight_decay is None:
        cfg.weight_decay = DEFAULT_WEIGHT_DECAY[cfg.optimizer]
    pretrained = cfg.backbone_weights is not None
    if cfg.backbone_lr_mult is None:
        cfg.backbone_lr_mult = FINETUNE_DEFAULTS["backbone_lr_mult"] if pretrained else 1.0
    if cfg.bn == "auto":
        cfg.bn = FINETUNE_DEFAULTS["bn"] if pretrained else "train"
    if cfg.color_jitter is None:
        cfg.color_jitter = FINETUNE_DEFAULTS["color_jitter"] if pretrained else 0.0
    if cfg.bn not in ("train", "frozen"):
        raise ConfigError(f"unknown --bn {cfg.bn!r}; choose auto, train or frozen")
    if not (cfg.backbone_lr_mult >= 0 and math.isfinite(cfg.backbone_lr_mult)):
        raise ConfigError(f"--backbone-lr-mult must be a number >= 0, got {cfg.backbone_lr_mult}")
    if not 0 <= cfg.color_jitter < 1:
        raise ConfigError(f"--color-jitter must be in [0, 1), got {cfg.color_jitter}")
    if cfg.amp not in AMP_MODES:
        raise ConfigError(f"unknown --amp {cfg.amp!r}; choose one of {', '.join(AMP_MODES)}")
    if cfg.geometry not in ("modern", "caffe"):
        raise ConfigError(f"unknown --geometry {cfg.geometry!r}; choose modern or caffe")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown --device {cfg.device!r}; choose auto, cpu or cuda")
    for name, lo in (("epochs", 1), ("batch_size", 1), ("val_batch_size", 1), ("workers", 0),
                     ("warmup_iters", 0), ("val_every", 1), ("freeze_backbone_epochs", 0)):
        if getattr(cfg, name) < lo:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(cfg, name)}")
    if cfg.iters is not None and cfg.iters < 1:
        raise ConfigError(f"--iters must be >= 1, got {cfg.iters}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ConfigError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.val_fraction is not None and not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1 (e.g. 0.1 holds out 10% for validation), "
                          f"got {cfg.val_fraction}")
    if cfg.val_fraction is not None and cfg.sbd is not None:
        raise ConfigError("--val-fraction with --sbd: VOC has its own val split; drop --val-fraction")
    check_mask_255(cfg.mask_255)
    if cfg.max_minutes is not None and not cfg.max_minutes > 0:
        raise ConfigError(f"--max-minutes must be > 0, got {cfg.max_minutes}")
    if isinstance(cfg.crop_size, (list, tuple)):
        if len(cfg.crop_size) != 2 or min(cfg.crop_size) < 1:
            raise ConfigError(f"--crop-size must be N or HxW with positive sizes, got {cfg.crop_size}")
        cfg.crop_size = [int(v) for v in cfg.crop_size]
    elif cfg.crop_size < 1:
        raise ConfigError(f"--crop-size must be >= 1, got {cfg.crop_size}")
    if cfg.scale:
        check_scale(cfg.scale)
        cfg.scale = [float(v) for v in cfg.scale]
    if cfg.class_weights not in ("none", "median-freq") and not Path(cfg.class_weights).is_file():
        raise ConfigError(f"--class-weights {cfg.class_weights!r}: expected none, median-freq, or an "
                          f"existing file of weights")
    if cfg.init and cfg.backbone_weights:
        raise ConfigError("--init and --backbone-weights both set: --init already provides every weight "
                          "(backbone included); pass only one")
    if cfg.sbd is not None and not Path(cfg.sbd).is_dir():
        raise DataError(f"--sbd {cfg.sbd}: no such directory; pass SBD's benchmark_RELEASE/dataset "
                        f"(fcnseg download --sbd fetches it)")
    for name in ("init", "backbone_weights"):
        path = getattr(cfg, name)
        if name == "backbone_weights" and path == "imagenet":
            continue  # resolved by the backbone (an installed package or a download)
        if path is not None and not Path(path).is_file():
            if name == "backbone_weights" and is_weights_name(str(path)):
                continue  # a catalog name ("imagenet", ...): resolved (and fetched) when the model is built
            raise ConfigError(f"--{name.replace('_', '-')} {path}: no such file"
                              + ("; or a name from `fcnseg weights`, e.g. imagenet" if name == "backbone_weights" else ""))
    if cfg.stages:
        if split_model_name(cfg.model)[0] not in STAGES:
            raise ConfigError(f"--stages is FCN's staged training (32s -> 16s -> 8s); --model {cfg.model} is a "
                              f"U-Net, which trains all at once: drop --stages")
        bad = [s for s in cfg.stages if s not in STAGES]
        if bad or len(set(cfg.stages)) != len(cfg.stages):
            raise ConfigError(f"--stages {','.join(cfg.stages)}: use a subset of 32s,16s,8s without repeats")
        cfg.stages = sorted(cfg.stages, key=STAGES.index)  # coarse to fine
        _, backbone = split_model_name(cfg.model)
        missing = [f"fcn{s}_{backbone}" for s in cfg.stages if f"fcn{s}_{backbone}" not in models]
        if missing:
            raise ConfigError(f"--stages: no model(s) {', '.join(missing)}")
    return cfg


def check_resume_compatible(cfg: TrainConfig, saved: dict[str, Any], source: str) -> None:
    """A resumed run must keep the settings that shape training; name the ones that differ."""
    diffs = []
    for key in RESUME_IDENTITY:
        if key in saved and _norm(saved[key]) != _norm(getattr(cfg, key)):
            diffs.append(f"{key}: run has {saved[key]!r}, now {getattr(cfg, key)!r}")
    if diffs:
        raise ConfigError(f"--resume {source}: settings differ from the interrupted run ({'; '.join(diffs)}); "
                          f"resume with the run's settings, or start a new run with another --out")


def _norm(v: Any) -> Any:
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v
