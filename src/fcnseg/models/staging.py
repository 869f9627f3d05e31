"""Staged training's initialisation: FCN-32s -> FCN-16s -> FCN-8s, copying every shared weight."""
from __future__ import annotations

import torch
from torch import nn

from fcnseg.models.fcn import FCN
from fcnseg.models.registry import build_model


@torch.no_grad()
def upgrade(model: nn.Module, to: str) -> nn.Module:
    """Staged training: FCN-32s -> FCN-16s, FCN-16s -> FCN-8s (or 32s -> 8s).

    Copies every weight the two nets share (backbone, score layers, x2 upsamplings); the
    new skip score layers start at zero, so at the moment of the copy the new model's
    output equals the old one's (up to float rounding: bilinear x2 then x16 = bilinear x32).
    """
    if not isinstance(model, FCN):
        name = getattr(model, "fcn_config", {}).get("name", type(model).__name__)
        raise ValueError(f"staged upgrade (FCN-32s -> 16s -> 8s) needs an FCN; {name} is not one")
    cfg = dict(model.fcn_config)
    if not isinstance(model, FCN):
        raise ValueError(f"{cfg.get('name')}: staged upgrade applies to the FCN-32s/16s/8s models only; "
                         f"this model has no skip stages")
    old_variant = model.variant
    to = to.removeprefix("fcn")
    order = ["32s", "16s", "8s"]
    if to not in order or order.index(to) <= order.index(old_variant):
        raise ValueError(f"can only upgrade to a finer variant: {old_variant} -> {to} is not allowed")
    arch = cfg["name"].split("_", 1)[1]
    cfg["name"] = f"fcn{to}_{arch}"
    new = build_model(**cfg)
    new_sd = new.state_dict()
    final_names = ("upscore.", "upscore16.", "upscore8.")
    shared = {k: v for k, v in model.state_dict().items()
              if k in new_sd and not k.startswith(final_names) and new_sd[k].shape == v.shape}
    new.load_state_dict(shared, strict=False)
    new.train(model.training)
    return new
