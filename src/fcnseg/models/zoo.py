"""Every registered model, one entry per name: ``fcn{32,16,8}s_{backbone}``, ``fcn_resnet*_dilated``
and ``unet_{encoder}``.

Each ``fcn{32,16,8}s_*`` entry builds the FCN head (:class:`fcnseg.models.fcn.FCN`) over a
backbone of :data:`fcnseg.models.backbones.BACKBONES` (family ``"fcn"``); each
``fcn_resnet*_dilated`` entry builds torchvision's dilated-ResNet FCN
(:class:`fcnseg.models.dilated_resnet.DilatedFCN`, family ``"dilated"``); each ``unet_*`` entry
builds a :class:`fcnseg.models.unet.UNet` over an encoder of :data:`UNET_ENCODERS` (family ``"unet"``).
:func:`fcnseg.models.build_model` calls them by name.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from fcnseg.models.backbones import BACKBONES, VGG16, Backbone
from fcnseg.models.dilated_resnet import DilatedFCN
from fcnseg.models.fcn import FCN
from fcnseg.models.input_convention import STANDARD
from fcnseg.models.registry import register_model
from fcnseg.models.unet import PlainEncoder, UNet


def _backbone(model: str, factory: Callable[..., Backbone], geometry: str, options: dict[str, Any]) -> Backbone:
    """``factory(geometry, **options)``; unknown options are a TypeError naming them and ``model``."""
    accepted = set(inspect.signature(factory).parameters) - {"geometry"}
    unknown = set(options) - accepted
    if unknown:
        raise TypeError(f"{model} got unknown option(s) {sorted(unknown)}; accepted: {sorted(accepted) or 'none'}")
    return factory(geometry=geometry, **options)


def _fcn(head: str, arch: str, num_classes: int, geometry: str, upsampling: str, at_once: bool,
         input_convention: str | None = None, **backbone_kwargs: Any) -> FCN:
    """FCN-``head`` on backbone ``arch``; unknown backbone options are a TypeError naming them."""
    backbone = _backbone(f"fcn{head}_{arch}", BACKBONES[arch], geometry, backbone_kwargs)
    convention = input_convention or getattr(backbone, "default_input_convention", STANDARD)
    return FCN(backbone, num_classes, head, geometry, upsampling, at_once, convention)


def _dilated(arch: str, num_classes: int, geometry: str, upsampling: str, at_once: bool,
             input_convention: str | None = None, aux: bool = False, **kw: Any) -> DilatedFCN:
    """torchvision's FCN on dilated ``arch``; the FCN-32s/16s/8s options are refused, not ignored."""
    name = f"fcn_{arch}_dilated"
    if kw:
        raise TypeError(f"{name} got unknown option(s) {sorted(kw)}; accepted: ['aux']")
    if geometry != "modern":
        raise ValueError(f"{name} has a single geometry (torchvision's); geometry={geometry!r} "
                         f"applies to the FCN-32s/16s/8s models only")
    if upsampling != "paper" or at_once:
        raise ValueError(f"{name} upsamples bilinearly without learned layers or skips; "
                         f"upsampling/at_once apply to the FCN-32s/16s/8s models only")
    return DilatedFCN(arch, num_classes, aux=bool(aux), input_convention=input_convention or STANDARD)


def vgg16_encoder(geometry: str = "modern") -> Backbone:
    """VGG16 up to pool5, without fc6/fc7: U-Net's VGG16 encoder."""
    return VGG16(geometry, classifier=False)


# unet_<arch>: the encoder. VGG16 is tapped at pool5, not fc7: fc6/fc7 (a 7x7 conv to 4096
# channels and a 1x1 one) hold 119M of VGG16's 134M parameters and, at 500x500, about 60 of
# its 217 GFLOPs, for an ImageNet classifier's head that a U-Net's decoder does not need;
# pool5 keeps the encoder to VGG16's 14.7M conv parameters (as TernausNet and
# segmentation_models_pytorch do). torchvision's vgg16 state dict still loads: its
# classifier weights are dropped, as FCN drops fc8.
UNET_ENCODERS: dict[str, Callable[..., Backbone]] = {
    "vgg16": vgg16_encoder,
    "resnet18": BACKBONES["resnet18"],
    "resnet34": BACKBONES["resnet34"],
    "resnet50": BACKBONES["resnet50"],
    "small": BACKBONES["small"],
    "efficientnet_lite0": BACKBONES["efficientnet_lite0"],
    "classic": PlainEncoder,
}


def _unet(arch: str, num_classes: int, geometry: str, input_convention: str | None = None, **kw: Any) -> UNet:
    """``unet_<arch>``; ``kw`` are the encoder's options (``small``: width, blocks; ``classic``:
    width, levels, batchnorm), unknown ones a TypeError. ``input_convention`` None: the encoder's default."""
    encoder = _backbone(f"unet_{arch}", UNET_ENCODERS[arch], geometry, kw)
    convention = input_convention or getattr(encoder, "default_input_convention", STANDARD)
    if arch == "classic":  # the paper's symmetric decoder: each level as wide as its skip
        widths = [encoder.tap_channels[s] for s in sorted(encoder.tap_channels, reverse=True)[1:]]
        return UNet(encoder, num_classes, geometry, widths, batchnorm=bool(kw.get("batchnorm", False)),
                    input_convention=convention)
    return UNet(encoder, num_classes, geometry, input_convention=convention)


@register_model("fcn32s_vgg16")
def fcn32s_vgg16(**kwargs: Any) -> FCN:
    """FCN-32s on VGG16 (the paper's backbone)."""
    return _fcn("32s", "vgg16", **kwargs)


@register_model("fcn16s_vgg16")
def fcn16s_vgg16(**kwargs: Any) -> FCN:
    """FCN-16s on VGG16 (the paper's backbone)."""
    return _fcn("16s", "vgg16", **kwargs)


@register_model("fcn8s_vgg16")
def fcn8s_vgg16(**kwargs: Any) -> FCN:
    """FCN-8s on VGG16 (the paper's backbone)."""
    return _fcn("8s", "vgg16", **kwargs)


@register_model("fcn32s_alexnet")
def fcn32s_alexnet(**kwargs: Any) -> FCN:
    """FCN-32s on AlexNet."""
    return _fcn("32s", "alexnet", **kwargs)


@register_model("fcn16s_alexnet")
def fcn16s_alexnet(**kwargs: Any) -> FCN:
    """FCN-16s on AlexNet."""
    return _fcn("16s", "alexnet", **kwargs)


@register_model("fcn8s_alexnet")
def fcn8s_alexnet(**kwargs: Any) -> FCN:
    """FCN-8s on AlexNet."""
    return _fcn("8s", "alexnet", **kwargs)


@register_model("fcn32s_resnet18")
def fcn32s_resnet18(**kwargs: Any) -> FCN:
    """FCN-32s on ResNet-18."""
    return _fcn("32s", "resnet18", **kwargs)


@register_model("fcn16s_resnet18")
def fcn16s_resnet18(**kwargs: Any) -> FCN:
    """FCN-16s on ResNet-18."""
    return _fcn("16s", "resnet18", **kwargs)


@register_model("fcn8s_resnet18")
def fcn8s_resnet18(**kwargs: Any) -> FCN:
    """FCN-8s on ResNet-18."""
    return _fcn("8s", "resnet18", **kwargs)


@register_model("fcn32s_resnet34")
def fcn32s_resnet34(**kwargs: Any) -> FCN:
    """FCN-32s on ResNet-34."""
    return _fcn("32s", "resnet34", **kwargs)


@register_model("fcn16s_resnet34")
def fcn16s_resnet34(**kwargs: Any) -> FCN:
    """FCN-16s on ResNet-34."""
    return _fcn("16s", "resnet34", **kwargs)


@register_model("fcn8s_resnet34")
def fcn8s_resnet34(**kwargs: Any) -> FCN:
    """FCN-8s on ResNet-34."""
    return _fcn("8s", "resnet34", **kwargs)


@register_model("fcn32s_resnet50")
def fcn32s_resnet50(**kwargs: Any) -> FCN:
    """FCN-32s on ResNet-50."""
    return _fcn("32s", "resnet50", **kwargs)


@register_model("fcn16s_resnet50")
def fcn16s_resnet50(**kwargs: Any) -> FCN:
    """FCN-16s on ResNet-50."""
    return _fcn("16s", "resnet50", **kwargs)


@register_model("fcn8s_resnet50")
def fcn8s_resnet50(**kwargs: Any) -> FCN:
    """FCN-8s on ResNet-50."""
    return _fcn("8s", "resnet50", **kwargs)


@register_model("fcn32s_resnet101")
def fcn32s_resnet101(**kwargs: Any) -> FCN:
    """FCN-32s on ResNet-101."""
    return _fcn("32s", "resnet101", **kwargs)


@register_model("fcn16s_resnet101")
def fcn16s_resnet101(**kwargs: Any) -> FCN:
    """FCN-16s on ResNet-101."""
    return _fcn("16s", "resnet101", **kwargs)


@register_model("fcn8s_resnet101")
def fcn8s_resnet101(**kwargs: Any) -> FCN:
    """FCN-8s on ResNet-101."""
    return _fcn("8s", "resnet101", **kwargs)


@register_model("fcn32s_small")
def fcn32s_small(**kwargs: Any) -> FCN:
    """FCN-32s on the small BatchNorm net that trains from scratch on a CPU (options: width, blocks)."""
    return _fcn("32s", "small", **kwargs)


@register_model("fcn16s_small")
def fcn16s_small(**kwargs: Any) -> FCN:
    """FCN-16s on the small BatchNorm net that trains from scratch on a CPU (options: width, blocks)."""
    return _fcn("16s", "small", **kwargs)


@register_model("fcn8s_small")
def fcn8s_small(**kwargs: Any) -> FCN:
    """FCN-8s on the small BatchNorm net that trains from scratch on a CPU (options: width, blocks)."""
    return _fcn("8s", "small", **kwargs)


@register_model("fcn32s_efficientnet_lite0")
def fcn32s_efficientnet_lite0(**kwargs: Any) -> FCN:
    """FCN-32s on EfficientNet-Lite0 (``backbone_weights="imagenet"``; options: padding, drop_connect)."""
    return _fcn("32s", "efficientnet_lite0", **kwargs)


@register_model("fcn16s_efficientnet_lite0")
def fcn16s_efficientnet_lite0(**kwargs: Any) -> FCN:
    """FCN-16s on EfficientNet-Lite0 (``backbone_weights="imagenet"``; options: padding, drop_connect)."""
    return _fcn("16s", "efficientnet_lite0", **kwargs)


@register_model("fcn8s_efficientnet_lite0")
def fcn8s_efficientnet_lite0(**kwargs: Any) -> FCN:
    """FCN-8s on EfficientNet-Lite0 (``backbone_weights="imagenet"``; options: padding, drop_connect)."""
    return _fcn("8s", "efficientnet_lite0", **kwargs)


@register_model("fcn32s_efficientnet_lite1")
def fcn32s_efficientnet_lite1(**kwargs: Any) -> FCN:
    """FCN-32s on EfficientNet-Lite1 (``backbone_weights="imagenet"``; options: padding, drop_connect)."""
    return _fcn("32s", "efficientnet_lite1", **kwargs)


@register_model("fcn16s_efficientnet_lite1")
def fcn16s_efficientnet_lite1(**kwargs: Any) -> FCN:
    """FCN-16s on EfficientNet-Lite1 (``backbone_weights="imagenet"``; options: padding, drop_connect)."""
    return _fcn("16s", "efficientnet_lite1", **kwargs)


@register_model("fcn8s_efficientnet_lite1")
def fcn8s_efficientnet_lite1(**kwargs: Any) -> FCN:
    """FCN-8s on EfficientNet-Lite1 (``backbone_weights="imagenet"``; options: padding, drop_connect)."""
    return _fcn("8s", "efficientnet_lite1", **kwargs)


@register_model("fcn32s_efficientnet_lite2")
def fcn32s_efficientnet_lite2(**kwargs: Any) -> FCN:
    """FCN-32s on EfficientNet-Lite2 (``backbone_weights="imagenet"``; options: padding, drop_connect)."""
    return _fcn("32s", "efficientnet_lite2", **kwargs)


@register_model("fcn16s_efficientnet_lite2")
def fcn16s_efficientnet_lite2(**kwargs: Any) -> FCN:
    """FCN-16s on EfficientNet-Lite2 (``backbone_weights="imagenet"``; options: padding, drop_connect)."""
    return _fcn("16s", "efficientnet_lite2", **kwargs)


@register_model("fcn8s_efficientnet_lite2")
def fcn8s_efficientnet_lite2(**kwargs: Any) -> FCN:
    """FCN-8s on EfficientNet-Lite2 (``backbone_weights="imagenet"``; options: padding, drop_connect)."""
    return _fcn("8s", "efficientnet_lite2", **kwargs)


@register_model("fcn_resnet50_dilated", family="dilated")
def fcn_resnet50_dilated(**kwargs: Any) -> DilatedFCN:
    """torchvision's FCN on a dilated ResNet-50 (output stride 8; option: aux)."""
    return _dilated("resnet50", **kwargs)


@register_model("fcn_resnet101_dilated", family="dilated")
def fcn_resnet101_dilated(**kwargs: Any) -> DilatedFCN:
    """torchvision's FCN on a dilated ResNet-101 (output stride 8; option: aux)."""
    return _dilated("resnet101", **kwargs)


@register_model("unet_vgg16", family="unet")
def unet_vgg16(**kwargs: Any) -> UNet:
    """U-Net on VGG16's convolutional layers (taps conv1_2 .. pool5; torchvision's vgg16 weights load)."""
    return _unet("vgg16", **kwargs)


@register_model("unet_resnet18", family="unet")
def unet_resnet18(**kwargs: Any) -> UNet:
    """U-Net on ResNet-18 (taps conv1, layer1 .. layer4)."""
    return _unet("resnet18", **kwargs)


@register_model("unet_resnet34", family="unet")
def unet_resnet34(**kwargs: Any) -> UNet:
    """U-Net on ResNet-34 (taps conv1, layer1 .. layer4)."""
    return _unet("resnet34", **kwargs)


@register_model("unet_resnet50", family="unet")
def unet_resnet50(**kwargs: Any) -> UNet:
    """U-Net on ResNet-50 (taps conv1, layer1 .. layer4; decoder levels capped at 256 channels)."""
    return _unet("resnet50", **kwargs)


@register_model("unet_efficientnet_lite0", family="unet")
def unet_efficientnet_lite0(**kwargs: Any) -> UNet:
    """U-Net on EfficientNet-Lite0 (taps stage1, stage2, stage3, stage5, head; ``backbone_weights="imagenet"``)."""
    return _unet("efficientnet_lite0", **kwargs)


@register_model("unet_small", family="unet")
def unet_small(**kwargs: Any) -> UNet:
    """U-Net on the small BatchNorm net that trains from scratch on a CPU (options: width, blocks)."""
    return _unet("small", **kwargs)


@register_model("unet_classic", family="unet")
def unet_classic(**kwargs: Any) -> UNet:
    """The U-Net paper's net: its own encoder and symmetric decoder (options: width, levels, batchnorm)."""
    return _unet("classic", **kwargs)
