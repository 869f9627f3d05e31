"""Layer geometry: coordinate maps, crop offsets, output sizes, bilinear kernels.

FCN fuses score maps computed at different strides, and the original Caffe nets crop
them with offsets that look like magic numbers (19; 5 and 27; 5, 9 and 31 for VGG16).
They are not magic: every spatial layer maps its output coordinate ``y`` back to its
input coordinate by an affine function, and composing those along a path gives, for
every blob, ``x_data = a * x_blob + b``. Two blobs at the same scale ``a`` are aligned
by an offset ``(b_1 - b_2) / a``. This module does that algebra (after Caffe's
``coord_map.py``), so offsets are derived from the actual layers of any backbone.

Conventions: a conv/pool with kernel k, stride s, padding p, dilation d maps
``x_in = s * x_out + (d * (k - 1) / 2 - p)``; a transposed conv is the inverse map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class CoordMap:
    """``x_data = a * x_blob + b`` for one spatial axis (FCN layers are square)."""

    a: float = 1.0
    b: float = 0.0

    def then(self, module: nn.Module) -> "CoordMap":
        """The map of the blob that ``module`` produces from a blob with this map."""
        if isinstance(module, nn.ConvTranspose2d):
            k, s, p, d = _kspd(module)
            # forward: x_out = s * x_in + (d(k-1)/2 - p)  =>  x_in = (x_out - (d(k-1)/2 - p)) / s
            return CoordMap(self.a / s, self.b + self.a * (p - d * (k - 1) / 2) / s)
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p, d = _kspd(module)
            return CoordMap(self.a * s, self.b + self.a * (d * (k - 1) / 2 - p))
        if isinstance(module, nn.ZeroPad2d):  # x_out = x_in + before
            return CoordMap(self.a, self.b - self.a * _pads(module)[0])
        return self  # pointwise layers (ReLU, BN, Dropout, ...) keep the map

    def through(self, modules: Iterable[nn.Module]) -> "CoordMap":
        m = self
        for module in modules:
            m = m.then(module)
        return m


def record_offset(offsets: dict[str, int], misalignment: dict[str, float], name: str, offset: float) -> int:
    """``offset`` rounded to the integer crop a head applies, stored under ``name`` in ``offsets``;
    a non-integer offset (a grid that cannot be aligned exactly) goes into ``misalignment``."""
    r = int(round(offset))
    if abs(offset - r) > 1e-6:
        misalignment[name] = abs(offset - r)
    offsets[name] = r
    return r


def offset_between(outer: CoordMap, inner: CoordMap) -> float:
    """Index in ``outer``'s grid of ``inner``'s origin (both at the same scale).

    E.g. VGG16 caffe geometry: outer = score_pool4 (16x - 91.5), inner = upscore2
    (16x - 11.5) -> 5.0, the reference net's crop offset.
    """
    if not math.isclose(outer.a, inner.a):
        raise ValueError(f"cannot align maps at different scales ({outer.a} vs {inner.a})")
    return (inner.b - outer.b) / outer.a


def out_size(module: nn.Module, n: int) -> int:
    """Spatial output size of a conv/pool/transposed conv for input size ``n`` (per axis)."""
    if isinstance(module, nn.ConvTranspose2d):
        k, s, p, d = _kspd(module)
        op = _first(module.output_padding)
        return (n - 1) * s - 2 * p + d * (k - 1) + op + 1
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p, d = _kspd(module)
        span = n + 2 * p - d * (k - 1) - 1
        if getattr(module, "ceil_mode", False):
            o = -(-span // s) + 1
            if (o - 1) * s >= n + p:  # PyTorch/Caffe: the last window must start inside
                o -= 1
            return o
        return span // s + 1
    if isinstance(module, nn.ZeroPad2d):
        before, after = _pads(module)
        return n + before + after
    return n


def pad_to_min_size(x: Tensor, min_size: int, cover: int) -> Tensor:
    """Zero-pad (B, C, H, W) at the bottom/right to at least ``min_size`` per side, and by at
    least ``cover`` (what makes the output grid cover the input); the kept region [0,H)x[0,W)
    keeps its place, and the caller crops back to it.

    Exported graphs must take the same branch PyTorch takes for EVERY size, so while tracing
    (ONNX export) the pads are computed as tensors from the input's shape instead of a Python
    ``if`` that the tracer would freeze at the example's size.
    """
    H, W = x.shape[-2:]
    if torch.jit.is_tracing():  # the TorchScript ONNX exporter
        # (2,) = [H, W] as a tensor op, so the exporter records Shape -> Sub -> Max -> Pad
        hw = torch._shape_as_tensor(x)[-2:]
        ph, pw = torch.clamp(min_size - hw, min=cover).unbind()
        return F.pad(x, (0, pw, 0, ph))
    if torch.onnx.is_in_onnx_export():  # the dynamo ONNX exporter: symbolic sizes
        # (torch.compile keeps the Python branch below: it guards on it and recompiles per case)
        # sym_max keeps H, W symbolic (a Python max or if would specialise the graph to one size)
        return F.pad(x, (0, torch.sym_max(cover, min_size - W), 0, torch.sym_max(cover, min_size - H)))
    if cover or H < min_size or W < min_size:
        return F.pad(x, (0, max(cover, min_size - W), 0, max(cover, min_size - H)))
    return x


def sizes_through(modules: Iterable[nn.Module], n: int) -> int:
    """Output size after ``modules`` for input size ``n``; 0 if any layer would get an empty map."""
    for module in modules:
        n = out_size(module, n)
        if n < 1:
            return 0
    return n


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights (C, C, k, k) that make a transposed conv do bilinear upsampling per channel.

    Channel i maps to channel i only. Works for even kernels (k = 2f, the Caffe nets) and odd
    ones (k = 2f - 1, which keeps corner-aligned feature grids such as ResNet's aligned).
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor  # (k,)
    filt = (filt1d[:, None] * filt1d[None, :]).float()  # (k, k)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    weight[idx, idx] = filt
    return weight


def _pads(module: nn.ZeroPad2d) -> tuple[int, int]:
    """(before, after) of a square zero padding (left = top, right = bottom), as FCN layers use."""
    left, right, top, bottom = module.padding
    if (left, right) != (top, bottom):
        raise ValueError(f"coordinate maps need the same padding on both axes, got {module.padding}")
    return left, right


def _first(v) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def _kspd(module: nn.Module) -> tuple[int, int, int, int]:
    k = _first(module.kernel_size)
    s = _first(module.stride) if module.stride is not None else k
    p = _first(module.padding)
    d = _first(getattr(module, "dilation", 1))
    return k, s, p, d
