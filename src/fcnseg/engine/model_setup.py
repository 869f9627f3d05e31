"""The model a training run starts from: built fresh (optionally with backbone weights), or
``--init`` from an fcnseg checkpoint, upgraded FCN-32s -> 16s -> 8s when the heads differ; a
checkpoint of another class count gives its backbone, under fresh score layers
(:mod:`fcnseg.models.relabel`). A U-Net initialises only a U-Net on the same encoder.

(A resumed run's model comes from its ``last.pt``: :func:`fcnseg.checkpoint.model_from_checkpoint`.)
"""
from __future__ import annotations

import torch

from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.engine.config import STAGES, TrainConfig, split_model_name
from fcnseg.engine.distributed import log_main
from fcnseg.errors import CheckpointError, ConfigError
from fcnseg.models import build_model, upgrade
from fcnseg.models.input_convention import STANDARD
from fcnseg.models.relabel import with_new_classes


def initial_model(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """``cfg.model`` for ``num_classes`` classes: from ``cfg.init``, else built (``--backbone-weights``)."""
    if cfg.init:
        return load_init(cfg.init, cfg.model, num_classes)
    try:
        model = build_model(cfg.model, num_classes=num_classes, geometry=cfg.geometry,
                            backbone_weights=cfg.backbone_weights, **cfg.model_kwargs)
    except TypeError as e:  # unknown --model-arg for this backbone
        raise ConfigError(f"--model-arg: {e}") from None
    convention = model.fcn_config.get("input_convention", STANDARD)
    if cfg.backbone_weights and convention != STANDARD:
        log_main(f"--backbone-weights {cfg.backbone_weights} expect input convention '{convention}': the model "
                 f"converts its (standard, ImageNet-normalised RGB) input itself; the checkpoints record it")
    return model


def load_init(path: str, model_name: str, num_classes: int) -> torch.nn.Module:
    """``--init CKPT``: the checkpoint's weights as ``model_name``, upgraded 32s -> 16s -> 8s if needed.

    A checkpoint for another class count gives only its backbone: the score and upsampling
    layers start as a new FCN's (score convs zero, upsampling bilinear).
    """
    ckpt = load_checkpoint(path)  # weights_only: refuses pickled code
    src = ckpt["model"].get("name", "?")
    if src == model_name and ckpt["model"].get("num_classes") == num_classes:
        # fine-tuning the same model (any family, e.g. an imported checkpoint)
        log_main(f"initialised {model_name} from {path}")
        return model_from_checkpoint(ckpt, num_classes=num_classes)
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
    if ckpt["model"].get("num_classes") != num_classes:  # another label set: fine-tune from its backbone
        model = with_new_classes(ckpt, model_name, num_classes, source=f"--init {path}")
        log_main(f"initialised {model_name} from {path}: backbone copied; its {ckpt['model'].get('num_classes')}-"
                 f"class score layers re-initialised for the data's {num_classes} classes (score convs zero, "
                 f"upsampling bilinear)")
        return model
    model = model_from_checkpoint(ckpt, num_classes=num_classes)
    if src_stride != dst_stride:
        model = upgrade(model, f"fcn{dst_stride}")  # staged training: new skips start at zero
        log_main(f"initialised {model_name} from {src} ({path}) by upgrade")
    else:
        log_main(f"initialised {model_name} from {path}")
    return model
