"""Import torchvision's segmentation FCNs (``fcn_resnet50``, ``fcn_resnet101``).

Their state dicts (``fcn_resnet50_coco-1167a1af.pth``, ``fcn_resnet101_coco-7ecb50ca.pth``, or
one saved from ``torchvision.models.segmentation.fcn_resnet*``) have exactly the parameter
names of fcnseg's ``fcn_resnet50_dilated`` / ``fcn_resnet101_dilated``
(:mod:`fcnseg.models.dilated_resnet`): ``backbone.layer1.0.conv1.weight``, ``classifier.0.weight``,
``aux_classifier.4.bias``... The depth comes from the number of layer3 blocks (6 or 23), the
class count from ``classifier.4.weight``, the auxiliary head from its presence. The input
convention is torchvision's (``imagenet``). torchvision's reference training scripts wrap the
state dict under ``model`` (with pickled ``args``: refused, as any file that needs code).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from fcnseg.errors import CheckpointError
from fcnseg.models import build_model, load_state_dict_checked
from fcnseg.models.surgery import check_state_dict
from fcnseg.weights.importing import (add_common_arguments, check_out, load_weights_file, resolve_input,
                                      save_imported)

LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101"}


def split_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    """The state dict of a loaded file (plain, or under ``model`` / ``state_dict``)."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not (isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, Tensor)
                                                     for k, v in obj.items())):
        raise CheckpointError(f"{source}: not a state dict (a mapping of parameter names to tensors); "
                              f"pass fcn_resnet50_coco-1167a1af.pth or a torchvision FCN's state_dict()")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def detect(sd: Mapping[str, Tensor], source: str) -> tuple[str, int, bool]:
    """(model name, num_classes, aux) of a torchvision FCN state dict; CheckpointError otherwise."""
    if any(k.startswith("classifier.0.convs.") for k in sd):
        raise CheckpointError(f"{source}: this is a DeepLabV3 checkpoint (ASPP head); fcnseg imports "
                              f"torchvision's FCN (fcn_resnet50 / fcn_resnet101) only")
    w = sd.get("classifier.4.weight")
    if w is None or w.dim() != 4 or not any(k.startswith("backbone.layer3.") for k in sd):
        raise CheckpointError(f"{source}: not a torchvision fcn_resnet50/101 state dict (no backbone.layer3.* "
                              f"or classifier.4.weight; keys start with {', '.join(sorted(sd)[:4])})")
    blocks = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("backbone.layer3."))
    if blocks not in LAYER3_BLOCKS:
        raise CheckpointError(f"{source}: layer3 has {blocks} blocks; fcnseg knows ResNet-50 (6) and "
                              f"ResNet-101 (23)")
    aux = any(k.startswith("aux_classifier.") for k in sd)
    return f"fcn_{LAYER3_BLOCKS[blocks]}_dilated", int(w.shape[0]), aux


def import_torchvision_fcn(path: str | Path, out: str | Path, *, overwrite: bool = False) -> nn.Module:
    """Convert a torchvision FCN state dict into an fcnseg checkpoint at ``out``; returns the model."""
    path = Path(path)
    out = check_out(out, overwrite)
    sd = split_state_dict(load_weights_file(path), str(path))
    name, num_classes, aux = detect(sd, str(path))
    with torch.device("meta"):  # names and shapes first, before allocating the weights
        check_state_dict(build_model(name, num_classes=num_classes, aux=aux), sd, source=str(path))
    model = build_model(name, num_classes=num_classes, aux=aux)
    load_state_dict_checked(model, sd, source=str(path))
    save_imported(model.eval(), out, {"format": "torchvision", "file": path.name,
                                      "arch": name.replace("_dilated", "")})
    return model


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "a torchvision fcn_resnet50/fcn_resnet101 state dict "
                            "(e.g. fcn_resnet50_coco-1167a1af.pth, or fcn_resnet50_coco)")


def run_import(args: argparse.Namespace) -> int:
    path = resolve_input(args.file, "torchvision")
    model = import_torchvision_fcn(path, args.out, overwrite=args.overwrite)
    aux = " (+ auxiliary head, unused at inference)" if model.aux_classifier is not None else ""
    print(f"wrote {args.out}: {model.fcn_config['name']}, {model.num_classes} classes{aux} (from {path})")
    return 0
