"""The 1x1 score convolutions (features -> class scores) computed as a matrix multiply on CPU.

Why: PyTorch 2.13's oneDNN corrupts the heap on CPUs with AMX when it computes the weight
gradient of ``Conv2d(4096, 11, 1)`` under ``torch.autocast("cpu", torch.bfloat16)``
(primitive ``brgconv_bwd_w:avx10_1_512_amx``; 4096->21/16/32 and 512->11 survive, and
``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` avoids it). Every FCN score layer over a 4096-channel
fc7 with an awkward class count (CamVid's 11) was exposed: ``fcnseg train`` segfaulted at its
first step (issue #9). Which shapes are affected is not known in full, so the workaround is
keyed on the layer, not on the host or the class count: on CPU every score conv runs as
a GEMM, forward and backward (oneDNN's/MKL's matmul, never a convolution primitive).
A 1x1 conv *is* a matrix multiply over the channels, so nothing is lost: the parameters
stay those of the ``nn.Conv2d`` (same names and shapes, state dicts unchanged), results
equal the conv's up to float rounding, and the score layers are ~0.1% of an FCN's work.

Kept as a convolution: on CUDA, and under ONNX export / tracing (the graph keeps a Conv
node). ``tests/test_amx_workaround.py`` checks that no 4096->11 convolution runs backward-
weights, and (on AMX hosts) whether the upstream bug is still there: when a PyTorch upgrade
fixes it, that test XPASSes and this module can go.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def score_conv(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv(x)`` for a 1x1 score conv (``(B, C, H, W) -> (B, N, H, W)``), as a GEMM on CPU.

    ``conv`` is the layer's ``nn.Conv2d`` (kernel 1, stride 1, no padding or groups). Anything
    else (another module, e.g. an inference-optimised replacement, or another conv) is simply
    called. NCHW input gives NCHW output, channels-last input channels-last output.
    """
    if not _as_gemm(conv, x):
        return conv(x)
    B, C, H, W = x.shape
    N = conv.out_channels
    weight = conv.weight.reshape(N, C)  # (N, C): a view, gradients flow to the conv's parameter
    if x.is_contiguous():
        # One (N, C) @ (C, H*W) per image. bmm on the expanded weight is as fast as the conv
        # (fp32) or faster (bf16); matmul's 2-D @ 3-D broadcasting was 2-3x slower, backward included.
        y = torch.bmm(weight.expand(B, N, C), x.view(B, C, H * W))  # (B, N, H*W)
        if conv.bias is not None:
            y = y + conv.bias.to(y.dtype)[:, None]  # the conv's output dtype under autocast too
        return y.view(B, N, H, W)
    # Channels-last (or other strides): a linear layer over the channel dim of (B, H, W, C).
    return F.linear(x.permute(0, 2, 3, 1), weight, conv.bias).permute(0, 3, 1, 2)  # (B, N, H, W), NHWC


def _as_gemm(conv: nn.Module, x: Tensor) -> bool:
    if type(conv) is not nn.Conv2d or x.dim() != 4 or x.device.type != "cpu":
        return False
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False  # exported graphs keep a Conv node
    return (tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and tuple(conv.padding) == (0, 0))
