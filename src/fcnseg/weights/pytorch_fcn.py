"""Import wkentaro/pytorch-fcn checkpoints (``FCN32s``, ``FCN16s``, ``FCN8s``, ``FCN8sAtOnce``).

pytorch-fcn (``torchfcn/models/fcn{32,16,8}s.py``) names its layers after the Caffe nets:
``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7`` (already convolutions), ``score_fr``,
``score_pool4``, ``score_pool3``, ``upscore2``, ``upscore_pool4`` and ``upscore`` /
``upscore16`` / ``upscore8``. Its geometry is the reference one (conv1_1 padded by 100,
ceil-mode pools, unpadded 7x7 fc6, crops 19; 5, 27; 5, 9, 31), which is fcnseg's ``caffe``
geometry; its input is BGR 0..255 minus the mean pixel (``torchfcn/datasets/voc.py``), fcnseg's
``caffe`` input convention. ``FCN8sAtOnce`` scales pool4 by 0.01 and pool3 by 0.0001 before
scoring (fcnseg's ``at_once``); the file does not say so unless its ``arch`` entry does, hence
``--at-once``. pytorch-fcn freezes every transposed conv during training (bilinear), so the
model is built with ``upsampling="fixed"``.

Files: a plain state dict (``fcn8s_from_caffe.pth``) or a training checkpoint with the state
dict under ``model_state_dict`` and ``arch``, ``best_mean_iu`` (a NumPy float), ... beside it.
Loaded with ``weights_only=True``; a file that needs code to unpickle is refused.
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

VGG_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
             "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")
# pytorch-fcn class -> (fcnseg variant, at_once)
ARCHS = {"FCN32s": ("32s", False), "FCN16s": ("16s", False), "FCN8s": ("8s", False), "FCN8sAtOnce": ("8s", True)}
# head layers per variant; the names are the same in fcnseg
HEADS = {"32s": ("score_fr", "upscore"),
         "16s": ("score_fr", "score_pool4", "upscore2", "upscore16"),
         "8s": ("score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4", "upscore8")}


def name_map(model: nn.Module) -> dict[str, str]:
    """pytorch-fcn layer name -> fcnseg module path, for ``model`` (an fcnseg ``fcn*_vgg16``)."""
    convs = [i for i, m in enumerate(model.backbone.features) if isinstance(m, nn.Conv2d)]  # 0, 2, 5, ...
    mapping = {theirs: f"backbone.features.{i}" for theirs, i in zip(VGG_CONVS, convs, strict=True)}
    mapping.update({"fc6": "backbone.fc6", "fc7": "backbone.fc7"})
    mapping.update({h: h for h in HEADS[model.variant]})
    return mapping


def split_checkpoint(obj: object, source: str) -> tuple[dict[str, Tensor], str | None]:
    """(state dict, pytorch-fcn class name or None) from a loaded file."""
    arch = None
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state_dict"), Mapping):
        arch = obj.get("arch") if isinstance(obj.get("arch"), str) else None
        obj = obj["model_state_dict"]
    if not (isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, Tensor)
                                                     for k, v in obj.items())):
        raise CheckpointError(f"{source}: not a pytorch-fcn checkpoint (expected a state dict, or a dict "
                              f"with 'model_state_dict'); pass fcn8s_from_caffe.pth or a model_best.pth.tar")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, arch


def detect(sd: Mapping[str, Tensor], arch: str | None, at_once: bool | None, source: str,
           filename: str = "") -> tuple[str, bool]:
    """(variant, at_once) from the ``arch`` entry, else from the layer names and ``at_once``.

    Without ``arch`` or ``at_once``, pytorch-fcn's own conversion ``fcn8s-atonce_from_caffe.pth``
    (a bare state dict) is recognised by its file name.
    """
    if arch is not None and arch not in ARCHS:
        raise CheckpointError(f"{source}: arch {arch!r} is not one of pytorch-fcn's FCNs ({', '.join(ARCHS)})")
    if arch is not None:
        variant, arch_at_once = ARCHS[arch]
        if at_once is not None and at_once != arch_at_once:
            raise CheckpointError(f"{source}: the file says arch {arch}; drop --at-once/--no-at-once")
        return variant, arch_at_once
    variant = next((v for v, layer in (("8s", "upscore8"), ("16s", "upscore16"), ("32s", "upscore"))
                    if f"{layer}.weight" in sd), None)
    if variant is None:
        raise CheckpointError(f"{source}: no upscore/upscore16/upscore8 layer; not a pytorch-fcn FCN "
                              f"(its keys start with {', '.join(sorted(sd)[:4])})")
    if at_once is None:
        at_once = variant == "8s" and filename == "fcn8s-atonce_from_caffe.pth"
    if at_once and variant != "8s":
        raise CheckpointError(f"{source}: --at-once applies to FCN8s files only, this is an FCN{variant}")
    return variant, at_once


def convert_state_dict(sd: Mapping[str, Tensor], model: nn.Module, source: str) -> dict[str, Tensor]:
    """Rename pytorch-fcn's keys to ``model``'s; missing/unexpected names are reported in pytorch-fcn's naming."""
    mapping = name_map(model)
    own = model.state_dict()
    expected = {f"{theirs}.{p}" for theirs, ours in mapping.items() for p in ("weight", "bias")
                if f"{ours}.{p}" in own}
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        parts = [f"{len(missing)} missing: {', '.join(missing[:6])}" if missing else "",
                 f"{len(unexpected)} unexpected: {', '.join(unexpected[:6])}" if unexpected else ""]
        raise CheckpointError(f"{source}: layer names do not match pytorch-fcn's FCN{model.variant} "
                              f"({'; '.join(p for p in parts if p)}); is this a pytorch-fcn VGG16 FCN?")
    out = {}
    for key, value in sd.items():
        layer, _, param = key.rpartition(".")
        out[f"{mapping[layer]}.{param}"] = value
    return out


def pytorch_fcn_model(sd: Mapping[str, Tensor], arch: str | None = None, at_once: bool | None = None,
                      source: str = "state dict", filename: str = "") -> nn.Module:
    """The fcnseg model (eval mode) holding pytorch-fcn state dict ``sd``.

    ``fcn{32,16,8}s_vgg16``, caffe geometry, caffe input convention, fixed upsampling, at once
    for ``FCN8sAtOnce``. Names and shapes are checked on a weightless (meta) copy first, so a
    file that does not fit fails before any large allocation.
    """
    variant, at_once = detect(sd, arch, at_once, source, filename)
    w = sd.get("score_fr.weight")
    if w is None or w.dim() != 4:
        raise CheckpointError(f"{source}: no 4-D score_fr.weight; not a pytorch-fcn FCN")
    name = f"fcn{variant}_vgg16"
    kwargs = dict(num_classes=int(w.shape[0]), geometry="caffe", upsampling="fixed", at_once=at_once,
                  input_convention="caffe")
    with torch.device("meta"):
        skeleton = build_model(name, **kwargs)
    ours = convert_state_dict(sd, skeleton, source)
    check_state_dict(skeleton, ours, source)
    model = build_model(name, **kwargs)
    load_state_dict_checked(model, ours, source=source)
    return model.eval()


def read_pytorch_fcn(path: str | Path) -> tuple[dict[str, Tensor], str | None]:
    """(state dict, pytorch-fcn class name or None) of a file, loaded safely."""
    return split_checkpoint(load_weights_file(Path(path)), str(path))


def import_pytorch_fcn(path: str | Path, out: str | Path, *, at_once: bool | None = None,
                       overwrite: bool = False) -> nn.Module:
    """Convert a pytorch-fcn file into an fcnseg checkpoint at ``out`` (atomic); returns the model.

    21 classes get the VOC names and palette.
    """
    path = Path(path)
    out = check_out(out, overwrite)
    sd, arch = read_pytorch_fcn(path)
    model = pytorch_fcn_model(sd, arch, at_once, source=str(path), filename=path.name)
    save_imported(model, out, {"format": "pytorch-fcn", "file": path.name,
                               "arch": arch or f"FCN{model.variant}{'AtOnce' if model.at_once else ''}"})
    return model


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "a pytorch-fcn checkpoint (fcn8s_from_caffe.pth, model_best.pth.tar, ...)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--at-once", dest="at_once", action="store_true", default=None,
                   help="the file is an FCN8sAtOnce (only needed when it has no 'arch' entry)")
    g.add_argument("--no-at-once", dest="at_once", action="store_false", default=None,
                   help="the file is a plain FCN8s even if its name says otherwise")


def run_import(args: argparse.Namespace) -> int:
    path = resolve_input(args.file, "pytorch-fcn")
    model = import_pytorch_fcn(path, args.out, at_once=args.at_once, overwrite=args.overwrite)
    print(f"wrote {args.out}: {model.fcn_config['name']}, {model.num_classes} classes, caffe geometry and "
          f"input convention{', at once' if model.at_once else ''} (from {path})")
    return 0
