"""The backbone contract, geometries, and the classifier convs (fc6/fc7) as one GEMM.

Every backbone returns a dict of named feature maps at strides 8, 16 and 32
(``feature_names``, FCN's), or, when asked with ``taps=``, the maps at every stride it has
(``tap_names``, U-Net's), and knows the modules on the path from the input to each one
(``coord_paths``), from which the heads derive their crop offsets. The contract is written
out in :class:`~fcnseg.models.backbones.base.Backbone`.
"""
from __future__ import annotations

from typing import Collection

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GEOMETRIES = ("modern", "caffe", "classifier")
CAFFE_PAD = 100


class Backbone(nn.Module):
    """Base class of the encoders. The contract a subclass implements:

    - ``arch``: its name (``"vgg16"``, ``"resnet50"``, ...; weight conversion keys on it).
    - ``feature_names`` / ``feature_channels``: ``{8: name, 16: name, 32: name}`` and their
      channel counts, the maps FCN scores (e.g. VGG16: pool3, pool4, fc7). Empty if the
      encoder has no stride-32 map (then it serves U-Net only).
    - ``tap_names`` / ``tap_channels``: ``{stride: name}`` for every stride the encoder has a
      map at, a contiguous run of powers of two ending at its deepest map (ResNets: 2, 4, 8,
      16, 32; VGG16: 1 .. 32), each the last map at that resolution; U-Net concatenates
      them. Empty if the encoder cannot serve U-Net.
    - ``forward(x, taps=None)``: ``x`` (B, 3, H, W) -> dict name -> (B, C, ~H/s, ~W/s).
      Without ``taps`` it returns exactly the ``feature_names`` maps and computes nothing
      else (FCN's path); with ``taps`` (names from either dict) it returns those maps and
      stops after the deepest one. Any H, W >= 1 that keeps every map >= 1x1 works.
    - ``coord_paths()``: for every name in either dict, the modules from the input to that
      map, in order (the heads derive grid alignment from them, see
      :mod:`fcnseg.models.geometry`).
    """

    feature_names: dict[int, str]
    feature_channels: dict[int, int]
    tap_names: dict[int, str] = {}
    tap_channels: dict[int, int] = {}
    arch: str

    def coord_paths(self) -> dict[str, list[nn.Module]]:
        """Modules (in order) from the input to each named feature map."""
        raise NotImplementedError

    def forward(self, x: Tensor, taps: Collection[str] | None = None) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _check_taps(self, taps: Collection[str]) -> set[str]:
        """``taps`` as a set; ValueError naming any map this backbone does not have."""
        known = set(self.feature_names.values()) | set(self.tap_names.values())
        unknown = set(taps) - known
        if unknown:
            raise ValueError(f"{self.arch} has no feature map(s) {sorted(unknown)}; it has {sorted(known)}")
        return set(taps)


# Above this many bytes of unfolded input, conv_as_gemm falls back to the convolution.
_GEMM_MAX_COLS_BYTES = 256 * 2**20


def conv_as_gemm(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for the classifier convs (fc6, fc7) as ``unfold`` + one matrix multiply on CPU.

    Eager oneDNN reorders a conv's plain weight into its blocked layout on every call
    (forward and backward): 411 MB for VGG16's fc6, ~20% of an FCN-8s forward at 360x480,
    and its direct 7x7 conv on the small stride-32 map runs at half MKL's GEMM rate. Same
    parameters and result (to float rounding); differentiable. CUDA keeps the conv.
    """
    if type(conv) is not nn.Conv2d:  # the fast path's prepared replacement (GemmConv2d, ...) runs itself
        return conv(x)
    B, C, H, W = x.shape
    (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
    Ho, Wo = H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
    exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()  # keep a Conv node in graphs
    if (exporting or x.device.type != "cpu" or not conv.weight.is_contiguous()  # NHWC weights: oneDNN
            or B * C * kh * kw * Ho * Wo * x.element_size() > _GEMM_MAX_COLS_BYTES):
        return conv(x)
    return gemm_conv2d(x, conv.weight.view(conv.out_channels, -1), conv.bias, (kh, kw), (ph, pw))


def gemm_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: tuple[int, int],
                padding: tuple[int, int], band_bytes: int | None = None) -> Tensor:
    """A stride-1, undilated conv as ``unfold`` + GEMM: x (B, C, H, W) -> (B, O, Ho, Wo).

    ``weight`` is the kernel flattened to (O, C*kh*kw) (a view of a conv's weight). The one
    implementation of the classifier-as-GEMM trick: :func:`conv_as_gemm` (eager, differentiable)
    and :class:`fcnseg.models.fastpath.GemmConv2d` (inference) both call it. ``band_bytes``
    (inference only): above that many bytes of unfolded input, work image by image in bands
    of output rows, writing into a channels-last output, so memory stays bounded.
    """
    B, _, H, W = x.shape
    (kh, kw), (ph, pw) = kernel, padding
    Ho, Wo = H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
    row_bytes = weight.shape[1] * Wo * x.element_size()  # unfolded input per output row, per image
    if band_bytes is None or B * Ho * row_bytes <= band_bytes:
        cols = F.unfold(x, (kh, kw), padding=(ph, pw))  # (B, C*kh*kw, Ho*Wo)
        y = torch.matmul(weight, cols)  # (B, O, Ho*Wo)
        if bias is not None:
            y = y + bias[:, None]
        return y.view(B, weight.shape[0], Ho, Wo)
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    out = x.new_empty((B, Ho, Wo, weight.shape[0])).permute(0, 3, 1, 2)  # NHWC storage
    band = max(1, min(Ho, band_bytes // max(row_bytes, 1)))  # output rows per GEMM
    for b in range(B):
        for r0 in range(0, Ho, band):
            r1 = min(Ho, r0 + band)
            out[b:b + 1, :, r0:r1] = gemm_conv2d(xp[b:b + 1, :, r0:r1 + kh - 1], weight, bias, (kh, kw), (0, 0))
    return out


def check_geometry(geometry: str) -> None:
    """ValueError unless ``geometry`` is one of :data:`GEOMETRIES`."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
