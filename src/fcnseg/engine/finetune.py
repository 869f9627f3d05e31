"""Fine-tuning a pretrained backbone: what the backbone does in each epoch.

The optimizer side (the backbone's lower learning rate, ``--backbone-lr-mult``) is in
:func:`fcnseg.engine.optim.build_optimizer`; the defaults that apply when
``--backbone-weights`` is given are :data:`fcnseg.engine.config.FINETUNE_DEFAULTS`.
"""
from __future__ import annotations

import torch


def set_backbone_mode(model: torch.nn.Module, *, frozen: bool, bn: str) -> None:
    """Per epoch: freeze or release the backbone's weights, and put its BatchNorm layers in
    eval mode when ``bn == "frozen"`` (running statistics used and kept, affine still learned).

    Call it after ``model.train()`` (which would put BatchNorm back in training mode). A
    function of the epoch only, so a resumed run sets the same state. A model without a
    ``backbone`` attribute is left as it is.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return
    for param in backbone.parameters():
        param.requires_grad_(not frozen)
    if bn == "frozen":
        for m in backbone.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
