"""FLOP and parameter counts, measured by running the model (no hand formulas).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no
memory, no compute): 2 FLOPs per multiply-add of every conv, transposed conv and matmul.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fcnseg.models.registry import build_model


def count_params(model: nn.Module) -> int:
    """Number of parameters (the fixed bilinear upsampling weights included)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, size: tuple[int, int], batch: int = 1) -> float:
    """FLOPs of one forward pass at input ``size`` = (H, W)."""
    cfg = getattr(model, "fcn_config", None)
    if cfg is not None:  # rebuild on the meta device: no weights are copied or allocated
        with torch.device("meta"):
            meta = build_model(**cfg).eval()
    else:
        meta = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(batch, 3, *size, device="meta")
    with FlopCounterMode(display=False) as counter:
        meta(x)
    return float(counter.get_total_flops())
