"""Optimizers and the poly learning-rate schedule."""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler

from fcnseg.errors import ConfigError

DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 1e-2}


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9, backbone_lr_mult: float = 1.0) -> torch.optim.Optimizer:
    """SGD with momentum (as in the paper) or AdamW over the trainable parameters.

    Biases and normalisation parameters (1-D tensors) get no weight decay. Frozen
    parameters (e.g. fixed bilinear upsampling) are left out. The backbone's parameters
    (``model.backbone``) learn at ``lr * backbone_lr_mult``: a pretrained backbone is
    fine-tuned more gently than the new, zero-initialised score layers. Groups:
    backbone decay, backbone no-decay, head decay, head no-decay (empty ones dropped);
    the poly schedule scales each group's own base rate.
    """
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    # One rate for all: the two groups of earlier versions (their last.pt files still resume).
    parts = (("backbone", backbone_lr_mult), ("head", 1.0)) if backbone_lr_mult != 1.0 else (("all", 1.0),)
    groups = []
    for part, mult in parts:
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad and (part == "all" or (id(p) in in_backbone) == (part == "backbone")):
                (decay if p.ndim > 1 else no_decay).append(p)
        groups += [{"params": ps, "weight_decay": wd, "lr": lr * mult}
                   for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps or part == "all"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ConfigError(f"unknown optimizer {name!r}; choose sgd or adamw")


class PolyLR(LRScheduler):
    """``lr = base_lr * (1 - step / total_steps) ** power``, with an optional linear warmup.

    During the first ``warmup_steps`` the factor is additionally multiplied by a ramp
    from ``warmup_factor`` to 1. Stepped once per optimizer step. Its state dict holds
    only numbers, so it is safe for ``weights_only`` checkpoints.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9,
                 warmup_steps: int = 0, warmup_factor: float = 0.1, last_epoch: int = -1):
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps, self.power = int(total_steps), float(power)
        self.warmup_steps, self.warmup_factor = int(warmup_steps), float(warmup_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        f = (1.0 - min(step, self.total_steps) / self.total_steps) ** self.power
        if step < self.warmup_steps:
            f *= self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        return f

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
