"""Fine-tuning on another label set: a trained FCN's backbone under fresh class-specific layers.

An FCN's parameters split into the backbone (features: class-agnostic) and the layers
whose shapes depend on the class count N: the 1x1 score convs (``score_fr``,
``score_pool4``, ``score_pool3``: ``(N, C, 1, 1)``) and the upsampling layers (``upscore*``:
``(N, N, k, k)``). Moving a model to a new label set keeps the first and builds the second
as a new FCN starts: score convs zero, upsampling bilinear (``train --init`` with data of
another class count).
"""
from __future__ import annotations

from torch import nn

from fcnseg.models.registry import build_model
from fcnseg.models.surgery import load_state_dict_checked

BACKBONE_PREFIX = "backbone."


def with_new_classes(ckpt: dict, name: str, num_classes: int, source: str = "checkpoint") -> nn.Module:
    """``name`` (e.g. ``fcn8s_vgg16``, same backbone as the checkpoint's model) for ``num_classes``
    classes, with the backbone of the fcnseg checkpoint ``ckpt`` (its geometry and backbone
    options too) and freshly initialised score and upsampling layers."""
    cfg = dict(ckpt["model"])
    cfg.pop("name", None)
    cfg.pop("backbone_weights", None)
    cfg["num_classes"] = num_classes
    cfg.setdefault("input_convention", "imagenet")  # as model_from_checkpoint: older checkpoints used it
    model = build_model(name, **cfg)
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(BACKBONE_PREFIX)}
    load_state_dict_checked(model.backbone, backbone, source=source)  # strict: every backbone weight
    return model
