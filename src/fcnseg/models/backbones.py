"""Backbones: image classifiers made fully convolutional.

Every backbone returns a dict of named feature maps at strides 8, 16 and 32
(``feature_names``, FCN's), or, when asked with ``taps=``, the maps at every stride it has
(``tap_names``, U-Net's), and knows the modules on the path from the input to each one
(``coord_paths``), from which the heads derive their crop offsets. The contract is written
out in :class:`Backbone`.

Parameter names match torchvision's models (``features.0.weight``, ``layer1.0.conv1.weight``,
...), so a torchvision state dict loads unchanged; only the classifier's fully connected
layers are renamed and reshaped into convolutions (``fc6``/``fc7``, see
:func:`fcnseg.models.surgery.convert_classifier_state_dict`). torchvision itself is not needed.

Geometries (``geometry=``):

- ``"modern"``: the classifier's own padding, fc6 padded by 3 so that its 7x7 window is
  centred (no wasted compute, small inputs work).
- ``"caffe"``: conv1 padded by 100 and fc6 unpadded, as in the reference Caffe FCNs.
- ``"classifier"``: the classifier's own padding and an unpadded fc6 -- exactly the
  classifier, convolutionalised (a 224x224 input gives a 1x1 fc7 map). Used by surgery.
"""
from __future__ import annotations

from typing import Collection, Sequence

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
    B, C, H, W = x.shape
    (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
    Ho, Wo = H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
    exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()  # keep a Conv node in graphs
    if (exporting or x.device.type != "cpu" or not conv.weight.is_contiguous()  # NHWC weights: oneDNN
            or B * C * kh * kw * Ho * Wo * x.element_size() > _GEMM_MAX_COLS_BYTES):
        return conv(x)
    cols = F.unfold(x, (kh, kw), padding=(ph, pw))  # (B, C*kh*kw, Ho*Wo)
    y = torch.matmul(conv.weight.view(conv.out_channels, -1), cols)  # (B, O, Ho*Wo)
    if conv.bias is not None:
        y = y + conv.bias[:, None]
    return y.view(B, conv.out_channels, Ho, Wo)


def _check_geometry(geometry: str) -> None:
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")


class ClassifierBackbone(Backbone):
    """A classifier with conv ``features`` and fully connected fc6/fc7 (VGG16, AlexNet).

    fc6/fc7 are convolutions here (``k x k`` over pool5, then 1x1). ``_taps`` names FCN's
    stride-8 and stride-16 maps by the end index of their slice of ``features``; ``_ends``
    names every map that can be tapped (``_taps``' and U-Net's) the same way.
    """

    _taps: dict[str, int]
    _ends: dict[str, int]

    def _add_fc67(self, in_ch: int, kernel: int, geometry: str, dropout: float) -> None:
        # modern: fc6 padded by 3 so its window is centred and small inputs work
        self.fc6 = nn.Conv2d(in_ch, 4096, kernel, padding=3 if geometry == "modern" else 0)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(dropout)

    def coord_paths(self) -> dict[str, list[nn.Module]]:
        f = list(self.features)
        paths = {name: f[:end] for name, end in self._ends.items()}
        if hasattr(self, "fc6"):
            paths["fc7"] = f + [self.fc6, self.fc7]
        return paths

    def forward(self, x: Tensor, taps: Collection[str] | None = None) -> dict[str, Tensor]:
        if taps is not None:
            return self._forward_taps(x, self._check_taps(taps))
        out: dict[str, Tensor] = {}
        start = 0
        for name, end in self._taps.items():  # (B, C8, H/8, W/8), then (B, C16, H/16, W/16)
            x = out[name] = self.features[start:end](x)
            start = end
        pool5 = self.features[start:](x)  # (B, C, H/32, W/32)
        fc6 = self.drop6(self.relu6(conv_as_gemm(self.fc6, pool5)))
        out["fc7"] = self.drop7(self.relu7(conv_as_gemm(self.fc7, fc6)))  # (B, 4096, H/32, W/32)
        return out

    def _forward_taps(self, x: Tensor, want: set[str]) -> dict[str, Tensor]:
        """The maps in ``want``; ``features`` runs only as deep as the deepest one."""
        out: dict[str, Tensor] = {}
        start = 0
        # Slices end after a ReLU or a pool, never between a conv and its ReLU (the CPU fast
        # path fuses those two).
        for name, end in sorted(self._ends.items(), key=lambda item: item[1]):
            if not want - out.keys():
                return out
            x = self.features[start:end](x)  # (B, C, ~H/s, ~W/s)
            start = end
            if name in want:
                out[name] = x
        if "fc7" in want:
            if not hasattr(self, "fc6"):
                raise ValueError(f"{self.arch} was built without fc6/fc7 (classifier=False)")
            pool5 = self.features[start:](x)
            fc6 = self.drop6(self.relu6(conv_as_gemm(self.fc6, pool5)))
            out["fc7"] = self.drop7(self.relu7(conv_as_gemm(self.fc7, fc6)))
        return out


# --------------------------------------------------------------------------- VGG16

_VGG16_CFG: Sequence[int | str] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                   512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(ClassifierBackbone):
    """VGG16 (configuration D), the paper's backbone. Features: pool3, pool4, fc7.

    Taps (U-Net): the last ReLU before each pool, conv1_2 .. conv5_3 at strides 1 .. 16, and
    pool5 at stride 32. ``classifier=False`` leaves out fc6/fc7 (an encoder that stops at
    pool5; a torchvision state dict still loads, its classifier weights are dropped).
    """

    arch = "vgg16"
    feature_names = {8: "pool3", 16: "pool4", 32: "fc7"}
    feature_channels = {8: 256, 16: 512, 32: 4096}
    tap_names = {1: "conv1_2", 2: "conv2_2", 4: "conv3_3", 8: "conv4_3", 16: "conv5_3", 32: "pool5"}
    tap_channels = {1: 64, 2: 128, 4: 256, 8: 512, 16: 512, 32: 512}
    _taps = {"pool3": 17, "pool4": 24}
    _ends = {"conv1_2": 4, "conv2_2": 9, "conv3_3": 16, "pool3": 17, "conv4_3": 23, "pool4": 24,
             "conv5_3": 30, "pool5": 31}

    def __init__(self, geometry: str = "modern", dropout: float = 0.5, classifier: bool = True) -> None:
        super().__init__()
        _check_geometry(geometry)
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG16_CFG:
            if v == "M":
                # ceil_mode as in Caffe: never drops border pixels, so any size >= 1 works.
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                pad = CAFFE_PAD if (geometry == "caffe" and not layers) else 1
                layers += [nn.Conv2d(in_ch, int(v), 3, padding=pad), nn.ReLU(inplace=True)]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)  # indices identical to torchvision's vgg16
        if classifier:
            self._add_fc67(512, 7, geometry, dropout)


# --------------------------------------------------------------------------- AlexNet

class AlexNet(ClassifierBackbone):
    """AlexNet (torchvision's one-GPU variant). Features: conv2 (s8), conv5 (s16), fc7 (s32)."""

    arch = "alexnet"
    feature_names = {8: "conv2", 16: "conv5", 32: "fc7"}
    feature_channels = {8: 192, 16: 256, 32: 4096}
    _taps = _ends = {"conv2": 5, "conv5": 12}

    def __init__(self, geometry: str = "modern", dropout: float = 0.5) -> None:
        super().__init__()
        _check_geometry(geometry)
        pad1 = CAFFE_PAD if geometry == "caffe" else 2
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=pad1), nn.ReLU(inplace=True),  # 0, 1
            nn.MaxPool2d(3, 2, ceil_mode=True),                                     # 2
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),                # 3, 4
            nn.MaxPool2d(3, 2, ceil_mode=True),                                     # 5
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),               # 6, 7
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),               # 8, 9
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),               # 10, 11
            nn.MaxPool2d(3, 2, ceil_mode=True),                                     # 12
        )
        # torchvision's classifier sees a 6x6 pool5 window: fc6 is a 6x6 conv.
        self._add_fc67(256, 6, geometry, dropout)


# --------------------------------------------------------------------------- ResNets

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def main_path(self) -> list[nn.Module]:
        return [self.conv1, self.conv2]

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def main_path(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.conv3]

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone):
    """ResNet (torchvision layout, no ``fc``). Features: layer2 (s8), layer3 (s16), layer4 (s32).

    ``stem="imagenet"`` is torchvision's 7x7/2 conv + 3x3/2 max pool; ``stem="small"`` is two
    3x3/2 conv-BN-ReLU layers (the from-scratch ``small`` backbone). Taps (U-Net): the stem's
    stride-2 map (``conv1``: conv1-bn1-relu before the max pool; ``stem1``: the small stem's
    first conv-BN-ReLU), then layer1 .. layer4 at strides 4 .. 32.
    """

    feature_names = {8: "layer2", 16: "layer3", 32: "layer4"}

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 widths: Sequence[int] = (64, 128, 256, 512), geometry: str = "modern",
                 stem: str = "imagenet", arch: str = "resnet") -> None:
        super().__init__()
        _check_geometry(geometry)
        self.arch = arch
        pad = CAFFE_PAD if geometry == "caffe" else None
        if stem == "imagenet":
            self.inplanes = widths[0]
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3 if pad is None else pad, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self._stem = [self.conv1, self.bn1, self.relu, self.maxpool]
        elif stem == "small":
            half = max(widths[0] // 2, 4)
            self.inplanes = widths[0]
            self.stem = nn.Sequential(
                nn.Conv2d(3, half, 3, 2, 1 if pad is None else pad, bias=False),
                nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, widths[0], 3, 2, 1, bias=False),
                nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
            self._stem = list(self.stem)
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2)
        e = block.expansion
        self.feature_channels = {8: widths[1] * e, 16: widths[2] * e, 32: widths[3] * e}
        self._s2_name = "conv1" if stem == "imagenet" else "stem1"
        self.tap_names = {2: self._s2_name, 4: "layer1", **self.feature_names}
        self.tap_channels = {2: self._stem[0].out_channels, 4: widths[0] * e, **self.feature_channels}
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def coord_paths(self) -> dict[str, list[nn.Module]]:
        path: list[nn.Module] = list(self._stem)
        out: dict[str, list[nn.Module]] = {self._s2_name: path[:3]}  # conv-BN-ReLU at stride 2
        for name in ("layer1", "layer2", "layer3", "layer4"):
            for blk in getattr(self, name):
                path = path + blk.main_path()
            out[name] = path
        return out

    def forward(self, x: Tensor, taps: Collection[str] | None = None) -> dict[str, Tensor]:
        if taps is not None:
            return self._forward_taps(x, self._check_taps(taps))
        if hasattr(self, "stem"):
            x = self.stem(x)                                   # (B, w, H/4, W/4)
        else:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer1(x)
        c3 = self.layer2(x)   # (B, C8, H/8, W/8)
        c4 = self.layer3(c3)  # (B, C16, H/16, W/16)
        c5 = self.layer4(c4)  # (B, C32, H/32, W/32)
        return {"layer2": c3, "layer3": c4, "layer4": c5}

    def _forward_taps(self, x: Tensor, want: set[str]) -> dict[str, Tensor]:
        """The maps in ``want``, running the layers only as deep as the deepest one."""
        if hasattr(self, "stem"):
            s2 = self.stem[:3](x)  # (B, w/2, H/2, W/2)
            x = self.stem[3:](s2)  # (B, w, H/4, W/4)
        else:
            s2 = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
            x = self.maxpool(s2)  # (B, 64, H/4, W/4)
        out = {self._s2_name: s2} if self._s2_name in want else {}
        for name in ("layer1", "layer2", "layer3", "layer4"):  # strides 4, 8, 16, 32
            if not want - out.keys():
                break
            x = getattr(self, name)(x)
            if name in want:
                out[name] = x
        return out


def vgg16(geometry: str = "modern", **kw) -> VGG16:
    return VGG16(geometry, **kw)


def alexnet(geometry: str = "modern", **kw) -> AlexNet:
    return AlexNet(geometry, **kw)


def resnet18(geometry: str = "modern") -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), geometry=geometry, arch="resnet18")


def resnet34(geometry: str = "modern") -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), geometry=geometry, arch="resnet34")


def resnet50(geometry: str = "modern") -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), geometry=geometry, arch="resnet50")


def small(geometry: str = "modern", width: int = 32, blocks: Sequence[int] = (1, 1, 2, 1)) -> ResNet:
    """A small residual net with BatchNorm that trains from scratch on a CPU.

    Widths (w, 2w, 4w, 8w) at strides 4..32; about 1.5 GFLOPs per 360x480 image at w=32.
    """
    w = int(width)
    return ResNet(BasicBlock, tuple(blocks), widths=(w, 2 * w, 4 * w, 8 * w), geometry=geometry,
                  stem="small", arch="small")


BACKBONES = {"vgg16": vgg16, "alexnet": alexnet, "resnet18": resnet18, "resnet34": resnet34,
             "resnet50": resnet50, "small": small}

