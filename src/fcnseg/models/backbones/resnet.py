"""ResNet backbones (torchvision layout, no ``fc``) and the small from-scratch ``small`` net.

Parameter names match torchvision's ``resnet18/34/50/101`` (``layer1.0.conv1.weight``, ...).
"""
from __future__ import annotations

from typing import Collection, Sequence

from torch import Tensor, nn

from fcnseg.models.backbones.base import CAFFE_PAD, Backbone, check_geometry


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1) -> None:
        super().__init__()
        if dilation != 1:
            raise ValueError("BasicBlock does not support dilation (torchvision neither)")
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
    """torchvision's ResNet v1.5 bottleneck: the stride (or dilation) sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation=dilation, bias=False)
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
    3x3/2 conv-BN-ReLU layers (the from-scratch ``small`` backbone).
    ``dilate`` (torchvision's ``replace_stride_with_dilation``, for layer2..layer4): a stage
    marked True keeps its input's stride and dilates its 3x3 convs instead; ``(False, True,
    True)`` gives torchvision's segmentation backbones (output stride 8). Taps (U-Net): the stem's
    stride-2 map (``conv1``: conv1-bn1-relu before the max pool; ``stem1``: the small stem's
    first conv-BN-ReLU), then layer1 .. layer4 at strides 4 .. 32.
    """

    feature_names = {8: "layer2", 16: "layer3", 32: "layer4"}

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 widths: Sequence[int] = (64, 128, 256, 512), geometry: str = "modern",
                 stem: str = "imagenet", arch: str = "resnet",
                 dilate: Sequence[bool] = (False, False, False)) -> None:
        super().__init__()
        check_geometry(geometry)
        self.arch = arch
        self.dilation = 1
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
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, dilate[2])
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

    def _make_layer(self, block, planes: int, blocks: int, stride: int, dilate: bool = False) -> nn.Sequential:
        # As torchvision: a dilated stage's first block keeps the previous dilation, the rest
        # use the new one (previous * stride).
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, dilation=previous)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
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


def resnet18(geometry: str = "modern") -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2) backbone, torchvision's ``resnet18`` layout without ``fc``."""
    return ResNet(BasicBlock, (2, 2, 2, 2), geometry=geometry, arch="resnet18")


def resnet34(geometry: str = "modern") -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3) backbone, torchvision's ``resnet34`` layout without ``fc``."""
    return ResNet(BasicBlock, (3, 4, 6, 3), geometry=geometry, arch="resnet34")


def resnet50(geometry: str = "modern") -> ResNet:
    """ResNet-50 (Bottleneck v1.5, 3-4-6-3) backbone, torchvision's ``resnet50`` layout without ``fc``."""
    return ResNet(Bottleneck, (3, 4, 6, 3), geometry=geometry, arch="resnet50")


def resnet101(geometry: str = "modern") -> ResNet:
    """ResNet-101 (Bottleneck v1.5, 3-4-23-3) backbone, torchvision's ``resnet101`` layout without ``fc``."""
    return ResNet(Bottleneck, (3, 4, 23, 3), geometry=geometry, arch="resnet101")


def small(geometry: str = "modern", width: int = 32, blocks: Sequence[int] = (1, 1, 2, 1)) -> ResNet:
    """A small residual net with BatchNorm that trains from scratch on a CPU.

    Widths (w, 2w, 4w, 8w) at strides 4..32; about 1.5 GFLOPs per 360x480 image at w=32.
    """
    w = int(width)
    return ResNet(BasicBlock, tuple(blocks), widths=(w, 2 * w, 4 * w, 8 * w), geometry=geometry,
                  stem="small", arch="small")
