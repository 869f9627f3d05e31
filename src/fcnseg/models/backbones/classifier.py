"""Classifier backbones with fully connected fc6/fc7 (VGG16, AlexNet), made convolutional.

Parameter names match torchvision's ``vgg16`` / ``alexnet`` (``features.0.weight``, ...);
only the classifier's fully connected layers are renamed and reshaped into convolutions
(``fc6``/``fc7``, see :func:`fcnseg.models.surgery.convert_classifier_state_dict`).
"""
from __future__ import annotations

from typing import Collection, Sequence

from torch import Tensor, nn

from fcnseg.models.backbones.base import CAFFE_PAD, Backbone, check_geometry, conv_as_gemm


class ClassifierBackbone(Backbone):
    """A classifier with conv ``features`` and fully connected fc6/fc7 (VGG16, AlexNet).

    fc6/fc7 are convolutions here (``k x k`` over pool5, then 1x1). ``_taps`` names FCN's
    stride-8 and stride-16 maps by the end index of their slice of ``features``; ``_ends``
    names every map that can be tapped (``_taps``' and U-Net's) the same way.
    """

    _taps: dict[str, int]
    _ends: dict[str, int]

    def _add_fc67(self, in_ch: int, kernel: int, geometry: str, dropout: float, width: int = 4096) -> None:
        # modern: fc6 padded by 3 so its window is centred and small inputs work
        self.fc6 = nn.Conv2d(in_ch, width, kernel, padding=3 if geometry == "modern" else 0)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(width, width, 1)
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

    def __init__(self, geometry: str = "modern", dropout: float = 0.5, fc_width: int = 4096,
                 classifier: bool = True) -> None:
        super().__init__()
        check_geometry(geometry)
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
        if classifier:  # False: stops at pool5 (U-Net's VGG16 encoder)
            # fc_width < 4096 only for small test nets (e.g. the Caffe importer's oracle tests)
            self._add_fc67(512, 7, geometry, dropout, int(fc_width))
            self.feature_channels = {**self.feature_channels, 32: int(fc_width)}


class AlexNet(ClassifierBackbone):
    """AlexNet (torchvision's one-GPU variant). Features: conv2 (s8), conv5 (s16), fc7 (s32)."""

    arch = "alexnet"
    feature_names = {8: "conv2", 16: "conv5", 32: "fc7"}
    feature_channels = {8: 192, 16: 256, 32: 4096}
    _taps = _ends = {"conv2": 5, "conv5": 12}

    def __init__(self, geometry: str = "modern", dropout: float = 0.5) -> None:
        super().__init__()
        check_geometry(geometry)
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


def vgg16(geometry: str = "modern", fc_width: int = 4096) -> VGG16:
    """VGG16 backbone (torchvision's ``vgg16`` layout); ``fc_width``: fc6/fc7 channels (4096;
    smaller only for small test nets, e.g. the Caffe importer's). U-Net's encoder, without
    fc6/fc7, is ``VGG16(geometry, classifier=False)``."""
    return VGG16(geometry, fc_width=fc_width)


def alexnet(geometry: str = "modern", **kw) -> AlexNet:
    """AlexNet backbone (torchvision's ``alexnet`` layout); ``kw``: ``dropout``."""
    return AlexNet(geometry, **kw)
