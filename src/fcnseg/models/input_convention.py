"""Input conventions: the pixel values a backbone's pretrained weights expect.

Every caller of an fcnseg model passes the SAME input: RGB, ``x = (pixel / 255 - mean) /
std`` with ImageNet's mean and std (what the datasets, :func:`fcnseg.segment`, ``predict``
and the ONNX runner produce). Weights from elsewhere were trained on other values: the
paper's Caffe models on BGR 0..255 minus a mean pixel, TensorFlow models on [-1, 1], and so
on. Feeding them the standard input silently costs accuracy (the most common complaint
about ported FCN weights). So the model converts its input itself, as its first operation,
with :class:`ConvertInput`; the convention's name is part of the model's build config and
therefore of every checkpoint.

The conversion is per channel affine (plus an RGB->BGR swap): with the standard input
``x_c = (p_c / 255 - m_c) / s_c`` for pixel ``p`` and the convention's
``y_k = (p_src(k) * range / 255 - mean_k) / std_k``, it is
``y_k = x_src(k) * (range * s_src / std_k) + (range * m_src - mean_k) / std_k``.
It is applied before any padding (the caffe geometry's pad of 100 then pads with the
convention's zero, as in the original nets), never folded into conv1's weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputConvention:
    """What a backbone's weights were trained on.

    ``channels``: "RGB" or "BGR"; ``range``: pixel values span [0, range] (255 or 1) before
    ``(v - mean) / std``; ``mean``/``std`` are in the convention's own channel order and range.
    """

    name: str
    channels: str
    range: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str = ""


CONVENTIONS: dict[str, InputConvention] = {c.name: c for c in (
    InputConvention("imagenet", "RGB", 1.0, IMAGENET_MEAN, IMAGENET_STD,
                    "RGB in [0, 1], ImageNet mean/std (torchvision; fcnseg's standard input)"),
    InputConvention("caffe", "BGR", 255.0, (104.00699, 116.66877, 122.67891), (1.0, 1.0, 1.0),
                    "BGR in [0, 255] minus the mean pixel (the paper's Caffe FCNs and VGG16)"),
    InputConvention("tf", "RGB", 255.0, (127.5, 127.5, 127.5), (127.5, 127.5, 127.5),
                    "RGB in [-1, 1] (TensorFlow 'inception' preprocessing)"),
    InputConvention("tf_lite", "RGB", 255.0, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0),
                    "RGB (p - 127) / 128 (TensorFlow EfficientNet-Lite preprocessing)"),
    InputConvention("unit", "RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB in [0, 1]"),
)}
STANDARD = "imagenet"


def get_convention(name: str) -> InputConvention:
    if name not in CONVENTIONS:
        raise ValueError(f"unknown input convention {name!r}; known: {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


class ConvertInput(nn.Module):
    """Standard input (B, 3, H, W) -> the values ``convention`` expects (B, 3, H, W).

    The identity for ``"imagenet"`` (no op at all in the graph). The scale/shift are
    non-persistent buffers: they follow ``.to()`` and export to ONNX as constants, but stay
    out of state dicts (the convention's name, in the build config, recreates them).
    """

    def __init__(self, convention: str = STANDARD) -> None:
        super().__init__()
        conv = get_convention(convention)
        self.convention = conv.name
        self.identity = conv.name == STANDARD
        src = [2, 1, 0] if conv.channels == "BGR" else [0, 1, 2]  # model channel k <- RGB channel src[k]
        m = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[src]
        s = torch.tensor(IMAGENET_STD, dtype=torch.float64)[src]
        mean = torch.tensor(conv.mean, dtype=torch.float64)
        std = torch.tensor(conv.std, dtype=torch.float64)
        self.swap = conv.channels == "BGR"
        self.register_buffer("scale", (conv.range * s / std).float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((conv.range * m - mean) / std).float().view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.identity:
            return x
        if self.swap:
            x = x.flip(1)  # RGB -> BGR, (B, 3, H, W)
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extra_repr(self) -> str:
        return self.convention
