"""Every registered model, one entry per name: ``fcn{32,16,8}s_{backbone}``.

Each entry builds the FCN head (:class:`fcnseg.models.fcn.FCN`) over a backbone of
:data:`fcnseg.models.backbones.BACKBONES`; :func:`fcnseg.models.build_model` calls it by name.
"""
from __future__ import annotations

import inspect
from typing import Any

from fcnseg.models.backbones import BACKBONES
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
