"""Every registered model, one entry per name: ``fcn{32,16,8}s_{backbone}`` and ``fcn_resnet*_dilated``.

Each ``fcn{32,16,8}s_*`` entry builds the FCN head (:class:`fcnseg.models.fcn.FCN`) over a
backbone of :data:`fcnseg.models.backbones.BACKBONES` (family ``"fcn"``); each
``fcn_resnet*_dilated`` entry builds torchvision's dilated-ResNet FCN
(:class:`fcnseg.models.dilated_resnet.DilatedFCN`, family ``"dilated"``).
:func:`fcnseg.models.build_model` calls them by name.
"""
from __future__ import annotations

import inspect
from typing import Any

from fcnseg.models.backbones import BACKBONES
from fcnseg.models.dilated_resnet import DilatedFCN
from fcnseg.models.fcn import FCN
from fcnseg.models.input_convention import STANDARD
from fcnseg.models.registry import register_model


def _fcn(head: str, arch: str, num_classes: int, geometry: str, upsampling: str, at_once: bool,
         input_convention: str | None = None, **backbone_kwargs: Any) -> FCN:
    """FCN-``head`` on backbone ``arch``; unknown backbone options are a TypeError naming them."""
    factory = BACKBONES[arch]
    accepted = set(inspect.signature(factory).parameters) - {"geometry"}
    unknown = set(backbone_kwargs) - accepted
    if unknown:
        raise TypeError(f"fcn{head}_{arch} got unknown option(s) {sorted(unknown)}; "
                        f"accepted: {sorted(accepted) or 'none'}")
    backbone = factory(geometry=geometry, **backbone_kwargs)
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
