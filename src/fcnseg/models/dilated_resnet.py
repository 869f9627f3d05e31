"""torchvision's FCN: a dilated ResNet (output stride 8) with a small conv head, upsampled bilinearly.

This is the architecture of torchvision's ``fcn_resnet50`` / ``fcn_resnet101`` (and their
COCO-with-VOC-labels weights), not the paper's skip architecture: no skips, no learned
upsampling, no pad of 100. Registered (in :mod:`fcnseg.models.zoo`) as ``fcn_resnet50_dilated``
and ``fcn_resnet101_dilated`` (family ``"dilated"``)::

    x (B,3,H,W) -> ResNet, layer3/layer4 dilated 2/4 instead of strided
        layer3 (B,1024,H/8,W/8) -> aux_classifier (optional; training only) -> unused here
        layer4 (B,2048,H/8,W/8) -> classifier: 3x3 conv 2048->512 (no bias), BN, ReLU,
                                   Dropout(0.1), 1x1 conv 512->C -> (B,C,H/8,W/8)
        -> bilinear (align_corners=False) to (B,C,H,W)

Parameter names are torchvision's (``backbone.layer1.0.conv1.weight``, ``classifier.0.weight``,
``classifier.4.bias``, ``aux_classifier.4.weight``...), so its state dicts load unchanged.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fcnseg.models.backbones.resnet import Bottleneck, ResNet
from fcnseg.models.input_convention import STANDARD, ConvertInput

DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


class FCNHead(nn.Sequential):
    """torchvision's ``FCNHead``: 3x3 conv (C/4, no bias), BN, ReLU, Dropout(0.1), 1x1 conv."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__(nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter),
                         nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(inter, num_classes, 1))


class DilatedFCN(nn.Module):
    """Dilated-ResNet FCN (torchvision layout). ``forward(x (B,3,H,W)) -> logits (B,C,H,W)``.

    ``x`` is the standard input (RGB, ImageNet mean/std), converted by ``input_convention``
    like every fcnseg model. ``aux`` adds torchvision's auxiliary head on layer3: its weights
    load and train with the model but it never contributes to the output.
    """

    def __init__(self, arch: str, num_classes: int, aux: bool = False,
                 input_convention: str = STANDARD) -> None:
        super().__init__()
        if arch not in DEPTHS:
            raise ValueError(f"arch must be one of {sorted(DEPTHS)}, got {arch!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.prepare_input = ConvertInput(input_convention)
        self.backbone = ResNet(Bottleneck, DEPTHS[arch], arch=arch, dilate=(False, True, True))
        self.classifier = FCNHead(2048, num_classes)
        self.aux_classifier = FCNHead(1024, num_classes) if aux else None
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        x = self.prepare_input(x)  # (B, 3, H, W)
        size = x.shape[-2:]
        feats = self.backbone(x)  # layer4: (B, 2048, ceil(H/8), ceil(W/8)), dilated, not strided
        out = self.classifier(feats["layer4"])  # (B, C, H/8, W/8)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)  # (B, C, H, W)
