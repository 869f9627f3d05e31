"""The model a training run starts from: built fresh (optionally with backbone weights), or
``--init`` from an fcnseg checkpoint, upgraded FCN-32s -> 16s -> 8s when the heads differ
(a U-Net initialises only a U-Net on the same encoder).

(A resumed run's model comes from its ``last.pt``: :func:`fcnseg.checkpoint.model_from_checkpoint`.)
"""
from __future__ import annotations

import torch

from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.engine.config import STAGES, TrainConfig, split_model_name
from fcnseg.engine.distributed import log_main
from fcnseg.errors import CheckpointError, ConfigError
from fcnseg.models import build_model, upgrade


def initial_model(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """``cfg.model`` for ``num_classes`` classes: from ``cfg.init``, else built (``--backbone-weights``)."""
    if cfg.init:
        return load_init(cfg.init, cfg.model, num_classes)
    try:
        return build_model(cfg.model, num_classes=num_classes, geometry=cfg.geometry,
                           backbone_weights=cfg.backbone_weights, **cfg.model_kwargs)
    except TypeError as e:  # unknown --model-arg for this backbone
        raise ConfigError(f"--model-arg: {e}") from None


def load_init(path: str, model_name: str, num_classes: int) -> torch.nn.Module:
    """``--init CKPT``: the checkpoint's weights as ``model_name``, upgraded 32s -> 16s -> 8s if needed."""
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
        log_main(f"initialised {model_name} from {src} ({path}) by upgrade")
    else:
        log_main(f"initialised {model_name} from {path}")
    return model
