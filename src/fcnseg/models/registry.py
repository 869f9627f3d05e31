"""Model registry: one dict, one decorator, ``list_models()`` and ``build_model()``."""
from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Mapping

from torch import Tensor, nn

from fcnseg.models.backbones import BACKBONES
from fcnseg.models.fcn import FCN, VARIANTS
from fcnseg.models.unet import ENCODERS as UNET_ENCODERS
from fcnseg.models.unet import build_unet

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# build_model options that only FCN heads have; entries marked fcn_head=False take neither.
_FCN_HEAD_DEFAULTS = {"upsampling": "paper", "at_once": False}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Registered model names, e.g. ``fcn8s_vgg16``, ``fcn32s_alexnet``, ``unet_resnet50``."""
    return sorted(_MODELS)


def build_model(name: str, num_classes: int = 21, geometry: str = "modern",
                backbone_weights: str | os.PathLike | Mapping[str, Tensor] | None = None,
                upsampling: str = "paper", at_once: bool = False, input_convention: str | None = None,
                **backbone_kwargs: Any) -> nn.Module:
    """Build a registered model: an :class:`FCN` or a :class:`~fcnseg.models.unet.UNet`.

    Args:
        name: e.g. ``"fcn8s_vgg16"``, ``"unet_resnet18"`` (see :func:`list_models`).
        num_classes: number of output channels (21 for PASCAL VOC).
        geometry: ``"modern"`` (fc6 padded by 3) or ``"caffe"`` (conv1 padded by 100, crops as
            in the reference nets).
        backbone_weights: a classifier/backbone state dict or a path to one (torchvision layout,
            e.g. ``vgg16-397923af.pth``, or ``.safetensors``); loaded safely (no unpickling).
        upsampling: ``"paper"``, ``"learned"`` or ``"fixed"`` (see :class:`FCN`; FCN only).
        at_once: scale skip features as in all-at-once training (FCN only).
        input_convention: the pixel values the backbone's weights expect (``"imagenet"``,
            ``"caffe"``, ``"tf"``, ...; see :mod:`fcnseg.models.input_convention`). None: the
            backbone's own default. Callers always pass the standard ImageNet-normalised RGB input.
        **backbone_kwargs: extra backbone options (``small``: ``width``, ``blocks``;
            ``unet_classic``: ``width``, ``levels``, ``batchnorm``).

    Returns the model; its ``fcn_config`` records these arguments (a U-Net's has no
    ``upsampling``/``at_once``), which is what checkpoints store to rebuild it.
    """
    if name not in _MODELS:
        import difflib

        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    if geometry not in ("modern", "caffe"):
        raise ValueError(f"geometry must be 'modern' or 'caffe', got {geometry!r}")
    entry = _MODELS[name]
    head = {"upsampling": upsampling, "at_once": at_once}
    if not getattr(entry, "fcn_head", True):
        if head != _FCN_HEAD_DEFAULTS:
            raise ValueError(f"{name}: upsampling= and at_once= are options of FCN heads; a U-Net has neither")
        head = {}
    model = entry(num_classes=num_classes, geometry=geometry, input_convention=input_convention, **head,
                  **backbone_kwargs)
    if backbone_weights is not None:
        from fcnseg.models.surgery import load_backbone_weights

        load_backbone_weights(model.backbone, backbone_weights)
    model.fcn_config = {"name": name, "num_classes": num_classes, "geometry": geometry,
                        **head, "input_convention": model.prepare_input.convention, **backbone_kwargs}
    return model


def _make_entry(variant: str, arch: str) -> Callable[..., FCN]:
    factory = BACKBONES[arch]
    accepted = set(inspect.signature(factory).parameters) - {"geometry"}

    def entry(num_classes: int, geometry: str, upsampling: str, at_once: bool,
              input_convention: str | None = None, **kw: Any) -> FCN:
        unknown = set(kw) - accepted
        if unknown:
            raise TypeError(f"fcn{variant}_{arch} got unknown option(s) {sorted(unknown)}; "
                            f"accepted: {sorted(accepted) or 'none'}")
        backbone = factory(geometry=geometry, **kw)
        convention = input_convention or getattr(backbone, "default_input_convention", "imagenet")
        return FCN(backbone, num_classes, variant, geometry, upsampling, at_once, convention)

    entry.__doc__ = f"FCN-{variant} on {arch}."
    return entry


for _arch in BACKBONES:
    for _variant in VARIANTS:
        register_model(f"fcn{_variant}_{_arch}")(_make_entry(_variant, _arch))


def _make_unet_entry(arch: str) -> Callable[..., nn.Module]:
    def entry(num_classes: int, geometry: str, input_convention: str | None = None, **kw: Any) -> nn.Module:
        return build_unet(arch, num_classes, geometry, input_convention, **kw)

    entry.__doc__ = f"U-Net on {arch}."
    entry.fcn_head = False  # type: ignore[attr-defined]
    return entry


for _arch in UNET_ENCODERS:
    register_model(f"unet_{_arch}")(_make_unet_entry(_arch))
