"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015) over fcnseg's backbones.

The encoder is a :class:`~fcnseg.models.backbones.Backbone` tapped at every stride it has
(``tap_names``: 2, 4, 8, 16, 32 for the ResNets and ``small``; 1 .. 32 for VGG16, whose
stride-32 map is pool5). The decoder climbs back one stride at a time. Data flow for a
ResNet encoder::

    layer4 (s32) --up x2--> (B,c16,~H/16,~W/16) --fit--> cat layer3 (s16) --2x conv3x3--> (B,c16,H/16,W/16)
      --up x2--> fit, cat layer2 (s8) --2x conv3x3--> ... cat conv1 (s2) --2x conv3x3--> (B,c2,H/2,W/2)
      --up x2--> (no skip at stride 1) --2x conv3x3--> (B,c1,H,W) --crop--> --head (1x1)--> logits (B,N,H,W)

Upsampling: a learned x2 **transposed convolution**, not bilinear + conv, because

- it is the paper's "up-convolution" (2x2, halving the channels);
- it can be placed exactly on the skip's grid. Encoders whose grids sit at pixel centres
  (2x2 max pools: VGG16, the classic U-Net) need a 2x2 kernel; encoders whose grids sit on
  pixel corners (strided 3x3 convs and 3x3/2 pools: ResNets, ``small``) need a 3x3 kernel
  with padding 1. The kernel is chosen per level from the layers' coordinate maps
  (:mod:`fcnseg.models.geometry`), as FCN's crop offsets are. Bilinear interpolation
  (``align_corners=False``) would put the upsampled ResNet samples a quarter of a coarse
  cell (half a fine pixel) off the skip's;
- it is one operator that exports to ONNX with dynamic sizes.

Any input size >= 1 works: pools round up (``ceil_mode``), so an up-sampled map can be up to
one pixel larger than the skip of the same stride; it is cropped (or zero-padded) onto the
skip's grid at an offset derived from the coordinate maps ("fit"), and the stride-1 output is
cropped to the input. The model returns raw logits (B, N, H, W) at the input's size.

Decoder widths: at each stride, the skip's channels capped at ``MAX_DECODER_CHANNELS`` (256,
as the widest decoder level of segmentation_models_pytorch; ResNet-50's 1024/2048-channel
maps would otherwise make the decoder larger than the encoder); at a stride without a skip,
half the previous level's. ``unet_classic`` is the paper's net: its own encoder
(:class:`PlainEncoder`, 64 .. 1024 channels at strides 1 .. 16, padded 3x3 convs) and a
symmetric decoder (512 .. 64), without BatchNorm unless ``batchnorm=True``.
"""
from __future__ import annotations

import math
from typing import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcnseg.models.backbones.base import CAFFE_PAD, Backbone, check_geometry
from fcnseg.models.geometry import (CoordMap, offset_between, out_size, pad_to_min_size, record_offset,
                                    sizes_through)
from fcnseg.models.input_convention import STANDARD, ConvertInput

MAX_DECODER_CHANNELS = 256
MIN_DECODER_CHANNELS = 8


class PlainEncoder(Backbone):
    """The U-Net paper's contracting path: ``levels`` levels of two 3x3 conv-ReLU (padded by 1,
    so sizes are kept), a 2x2 max pool between levels. Widths w, 2w, .. at strides 1, 2, ..

    Default: w = 64, 5 levels (64 .. 1024 channels, deepest map at stride 16), the paper's.
    Pools round up (ceil_mode): no border pixel is dropped and any size >= 1 works. The
    ``caffe`` geometry pads the first conv by 100, as the FCN backbones do.
    """

    arch = "classic"
    feature_names: dict[int, str] = {}  # no stride-32 map: not an FCN backbone
    feature_channels: dict[int, int] = {}

    def __init__(self, geometry: str = "modern", width: int = 64, levels: int = 5,
                 batchnorm: bool = False) -> None:
        super().__init__()
        check_geometry(geometry)
        if int(width) < 1 or int(levels) < 1:
            raise ValueError(f"width and levels must be >= 1, got width={width}, levels={levels}")
        self.levels = nn.ModuleList()
        cin = 3
        for i in range(int(levels)):
            cout = int(width) * 2 ** i
            layers: list[nn.Module] = [nn.MaxPool2d(2, 2, ceil_mode=True)] if i else []
            layers += double_conv(cin, cout, batchnorm, first_pad=CAFFE_PAD if geometry == "caffe" and i == 0 else 1)
            self.levels.append(nn.Sequential(*layers))
            cin = cout
        self.tap_names = {2 ** i: f"level{i + 1}" for i in range(int(levels))}
        self.tap_channels = {2 ** i: int(width) * 2 ** i for i in range(int(levels))}
        _init_convs(self)

    def coord_paths(self) -> dict[str, list[nn.Module]]:
        path: list[nn.Module] = []
        out = {}
        for i, level in enumerate(self.levels):
            path = path + list(level)
            out[f"level{i + 1}"] = path
        return out

    def forward(self, x: Tensor, taps: Collection[str] | None = None) -> dict[str, Tensor]:
        want = self._check_taps(taps if taps is not None else [])
        out: dict[str, Tensor] = {}
        for i, level in enumerate(self.levels):
            if not want - out.keys():
                break
            x = level(x)  # (B, w * 2^i, ~H/2^i, ~W/2^i)
            if f"level{i + 1}" in want:
                out[f"level{i + 1}"] = x
        return out


class UpBlock(nn.Module):
    """One decoder level: x2 transposed conv, fit onto the skip's grid and concatenate, two
    3x3 convs. ``offset`` = index in the upsampled map of the skip's origin (derived)."""

    def __init__(self, cin: int, cskip: int, cout: int, kernel: int, batchnorm: bool, offset: int = 0) -> None:
        super().__init__()
        # kernel 2: pad 0 -> 2n; kernel 3: pad 1 + output_padding 1 -> 2n
        self.up = nn.ConvTranspose2d(cin, cout, kernel, 2, padding=kernel - 2, output_padding=kernel - 2)
        self.conv = nn.Sequential(*double_conv(cout + cskip, cout, batchnorm))
        self.offset = offset

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(x)  # (B, cout, 2h, 2w)
        if skip is not None:
            x = torch.cat([_fit(x, skip.shape[-2:], self.offset), skip], 1)  # (B, cout + cskip, h_s, w_s)
        return self.conv(x)


class UNet(nn.Module):
    """U-Net: encoder taps -> x2 up-convs with concatenated skips -> 1x1 head -> logits.

    Args:
        backbone: a :class:`Backbone` with ``tap_names`` (see its contract).
        num_classes: N, output channels (logits).
        geometry: "modern" or "caffe" (must match how the backbone was built).
        decoder_channels: width per decoder level, coarse to fine (one per stride from the
            deepest tap's / 2 down to 1); default: see the module docstring.
        batchnorm: BatchNorm after each decoder conv.
        input_convention: what the encoder's weights expect (:mod:`fcnseg.models.input_convention`);
            the model converts the standard input (RGB, ImageNet-normalised) itself.

    ``forward(x: (B,3,H,W)) -> logits (B,N,H,W)`` for any H, W >= 1; ``x`` is always the
    standard input.
    Attributes as FCN's: ``crop_offsets`` (derived, ints), ``misalignment`` (empty when every
    grid lines up exactly), ``min_input_size``, ``cover_pad``.
    """

    def __init__(self, backbone: Backbone, num_classes: int, geometry: str = "modern",
                 decoder_channels: Sequence[int] | None = None, batchnorm: bool = True,
                 input_convention: str = STANDARD) -> None:
        super().__init__()
        # First op of forward, before any padding; holds no state-dict entries.
        self.prepare_input = ConvertInput(input_convention)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        names, chans = dict(backbone.tap_names), dict(backbone.tap_channels)
        strides = sorted(names)
        if not strides or any(b != 2 * a for a, b in zip(strides, strides[1:])) or strides[0] & (strides[0] - 1):
            raise ValueError(f"{backbone.arch}: U-Net needs taps at consecutive powers of two, got "
                             f"strides {strides}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.geometry = geometry
        paths = backbone.coord_paths()
        maps = {s: CoordMap().through(paths[names[s]]) for s in strides}
        deepest = strides[-1]
        levels = [deepest >> i for i in range(1, deepest.bit_length())]  # e.g. 16, 8, 4, 2, 1
        if decoder_channels is None:
            decoder_channels = []
            prev = chans[deepest]
            for s in levels:
                prev = min(chans[s], MAX_DECODER_CHANNELS) if s in names else max(prev // 2, MIN_DECODER_CHANNELS)
                decoder_channels.append(prev)
        if len(decoder_channels) != len(levels):
            raise ValueError(f"decoder_channels needs {len(levels)} widths (strides {levels}), got "
                             f"{list(decoder_channels)}")

        self.crop_offsets: dict[str, int] = {}
        self.misalignment: dict[str, float] = {}
        self.decoder = nn.ModuleList()
        self._skips: list[str | None] = []
        cur, cin = maps[deepest], chans[deepest]
        for i, (s, cout) in enumerate(zip(levels, decoder_channels)):
            skip = names.get(s)
            # the grid to land on: the skip's, or (no skip) the stride's corner-aligned grid,
            # which at stride 1 is the input's pixels
            target = maps[s] if skip else CoordMap(float(s), 0.0)
            kernel = _up_kernel(cur, target)
            block = UpBlock(cin, chans[s] if skip else 0, int(cout), kernel, batchnorm)
            up = cur.then(block.up)
            if skip:
                block.offset = self._record(f"decoder.{i}", offset_between(up, target))
                cur = target
            else:
                cur = up
            self.decoder.append(block)
            self._skips.append(skip)
            cin = int(cout)
        self.head = nn.Conv2d(cin, num_classes, 1)
        # index in the stride-1 map of the input's first pixel (caffe geometry: the pad of 100)
        # Negative for an encoder whose stride-2 grid starts inside the image (TF "SAME"
        # padding, e.g. EfficientNet-Lite: its first map's pixel j is centred on input pixel 2j + 1):
        # the forward then repeats the output's first row/column (replicate padding).
        self._final_offset = self._record("output", -cur.b)
        self._taps = [names[deepest], *(n for n in self._skips if n)]
        self._paths = {n: paths[n] for n in self._taps}
        self.min_input_size = _min_input_size(self._paths.values())
        # Bottom/right padding that makes the output cover the whole input; 0 for every
        # registered encoder, needed by ones whose finest map drops border pixels.
        self.cover_pad = next(c for c in range(0, 257)
                              if all(self._extent(n + c) >= n + self._final_offset for n in range(1, 257)))
        del self._paths
        self._deepest = names[deepest]
        _init_convs(self.decoder)

    def _record(self, name: str, offset: float) -> int:
        return record_offset(self.crop_offsets, self.misalignment, name, offset)

    def _extent(self, n: int) -> int:
        """Size (per axis) of the stride-1 map before the final crop, for input size ``n``."""
        n = max(n, self.min_input_size)
        cur = sizes_through(self._paths[self._taps[0]], n)
        for block, skip in zip(self.decoder, self._skips):
            cur = sizes_through(self._paths[skip], n) if skip else out_size(block.up, cur)
        return cur

    def forward(self, x: Tensor) -> Tensor:
        x = self.prepare_input(x)  # (B, 3, H, W) in the encoder's own input convention
        H, W = x.shape[-2:]
        x = pad_to_min_size(x, self.min_input_size, self.cover_pad)  # bottom/right only
        feats = self.backbone(x, taps=self._taps)
        y = feats[self._deepest]  # (B, C, ~H/32, ~W/32)
        for block, skip in zip(self.decoder, self._skips):
            y = block(y, feats[skip] if skip else None)  # (B, c_s, ~H/s, ~W/s), s halving
        o = self._final_offset
        if o < 0:  # the output grid starts -o pixels inside the image: repeat its edge
            y = F.pad(y, (-o, 0, -o, 0), mode="replicate")
            o = 0
        if y.shape[-2] < o + H or y.shape[-1] < o + W:  # a geometry bug, never user error
            raise RuntimeError(f"internal: output {tuple(y.shape[-2:])} too small for crop "
                               f"offset {o} and input {(H, W)}")
        return self.head(y[..., o:o + H, o:o + W])  # (B, N, H, W)


# ----------------------------------------------------------------------------- helpers

def double_conv(cin: int, cout: int, batchnorm: bool, first_pad: int = 1) -> list[nn.Module]:
    """Two 3x3 conv(-BN)-ReLU layers, padded by 1 (the first by ``first_pad``)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(((cin, cout), (cout, cout))):
        layers.append(nn.Conv2d(a, b, 3, padding=first_pad if i == 0 else 1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(b))
        layers.append(nn.ReLU(inplace=True))
    return layers


def _init_convs(module: nn.Module) -> None:
    """He initialisation (the U-Net paper: Gaussian, std sqrt(2 / fan-in)), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _up_kernel(src: CoordMap, dst: CoordMap) -> int:
    """2 or 3: the x2 transposed-conv kernel whose output grid lands on ``dst`` at an integer offset.

    Kernel 2 (pad 0) maps ``a*u + b`` to ``a/2*j + b - a/4``: right for grids at pixel centres
    (after 2x2 pools). Kernel 3 (pad 1) maps it to ``a/2*j + b``: right for grids on pixel
    corners (after strided 3x3 convs/pools). Falls back to 2 (the misalignment is recorded).
    """
    for kernel in (2, 3):
        b = src.b + src.a * ((kernel - 2) - (kernel - 1) / 2) / 2
        v = (dst.b - b) / (src.a / 2)
        if math.isclose(v, round(v), abs_tol=1e-9):
            return kernel
    return 2


def _fit(x: Tensor, size: Sequence[int], d: int) -> Tensor:
    """``x`` cropped (or zero-padded) to ``size`` = (h, w), starting at index ``d`` of ``x``."""
    h, w = size
    # F.pad with negative amounts crops: one call fits either way.
    return F.pad(x, (-d, w - x.shape[-1] + d, -d, h - x.shape[-2] + d))


def _min_input_size(paths: Collection[list[nn.Module]], limit: int = 4096) -> int:
    """Smallest input size for which every tapped map is at least 1x1."""
    for n in range(1, limit):
        if all(sizes_through(p, n) >= 1 for p in paths):
            return n
    raise ValueError("encoder needs inputs larger than 4096 pixels")
