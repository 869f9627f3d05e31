"""``fcnseg import caffe``: the paper's Caffe models as ordinary fcnseg checkpoints, without Caffe.

Two kinds of file are imported:

- **FCN-VGG16 nets** (``fcn32s-heavy-pascal``, ``fcn16s-heavy-pascal``, ``fcn8s-heavy-pascal``,
  ``fcn8s-atonce-pascal``): ``--caffemodel FILE [--prototxt FILE] --out model.pt`` writes an
  fcnseg checkpoint (``fcn{32,16,8}s_vgg16``, caffe geometry, the file's class count; 21 VOC
  names and palette for VOC nets) with ``input_convention="caffe"``, so every caller keeps
  passing the standard RGB ImageNet-normalised input. ``eval``, ``predict``, ``export`` and
  :func:`fcnseg.segment` use it unchanged.
- **The VGG16 classifier** (``VGG_ILSVRC_16_layers.caffemodel``, V1 format) with
  ``--backbone vgg16``: a backbone file for ``--backbone-weights`` (see
  :func:`backbone_from_caffe` for its format and how the convention travels with it).

Without ``--prototxt`` the variant comes from the caffemodel's layer names: ``score_pool3`` ->
FCN-8s, else ``score_pool4`` -> FCN-16s, else FCN-32s; ``scale_pool4``/``scale_pool3`` ->
at-once. The net's structure (the prototxt, or the caffemodel's own copy of its layer
parameters) is checked against fcnseg's: layer names, every conv/deconv/pool's kernel,
stride, pad, dilation and group, and the Crop offsets (fcnseg derives 19 / 5, 27 / 5, 9, 31;
the file must say the same). Any mismatch is one error naming the file and the layer.

Layouts: Caffe conv weights are (out, in, kh, kw) like ``nn.Conv2d``; Deconvolution weights are
(in, out/group, kh, kw) like ``nn.ConvTranspose2d`` (copied as they are; a per-class
``group: C`` kernel (C, 1, k, k) becomes the equivalent dense diagonal one); an InnerProduct
fc6 (4096, 25088) is the 7x7 conv (4096, 512, 7, 7) in row-major order. The at-once nets'
Scale layers (constant 0.01 / 0.0001 in the published files) are fcnseg's ``at_once`` skip
scaling; any other per-channel scale is folded into the 1x1 score layer it feeds, which is
exact (1x1, unpadded).

Upsampling: the transposed convs' weights come from the file whatever they are, so the
forward pass is reproduced exactly in any mode; the mode only says which of them a later
fine-tuning would learn. It is read from the weights: ``fixed`` when all are bilinear (the
published deploy nets: every Deconvolution has ``lr_mult: 0``), ``paper`` when only the x2
ones were learned, ``learned`` when the final one was too.

This module maps a net onto fcnseg's VGG16 FCN and writes the result; reading the files is
:mod:`fcnseg.weights.caffe_net` (layers, blobs, geometry) over :mod:`fcnseg.weights.caffe_proto`
(the protobuf message classes).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fcnseg.checkpoint import save_checkpoint
from fcnseg.constants import VOC_CLASSES
from fcnseg.data.image_files import default_palette
from fcnseg.errors import CheckpointError, ConfigError
from fcnseg.labels import class_names_or_default
from fcnseg.models import build_model, load_state_dict_checked
from fcnseg.models.backbones import BACKBONES
from fcnseg.models.fcn import AT_ONCE_SCALE
from fcnseg.models.geometry import bilinear_kernel
from fcnseg.torch_files import atomic_save_torch
from fcnseg.weights.caffe_net import CaffeNet, conv_geometry, outputs, pool_geometry, sha256, strip_ones

VGG16_CONVS = tuple(f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1))
VGG16_POOLS = tuple(f"pool{b}" for b in range(1, 6))
FINAL_UPSCORE = {"32s": "upscore", "16s": "upscore16", "8s": "upscore8"}
SKIP_LAYERS = {"16s": ("score_pool4", "upscore2"), "8s": ("score_pool4", "upscore2", "score_pool3", "upscore_pool4")}
SCALE_LAYERS = {"scale_pool4": ("score_pool4", 16), "scale_pool3": ("score_pool3", 8)}  # -> fed layer, stride
X2_UPSCORES = ("upscore2", "upscore_pool4")
SUPPORTED = ("fcn32s-heavy-pascal, fcn16s-heavy-pascal, fcn8s-heavy-pascal, fcn8s-atonce-pascal "
             "(FCN-VGG16 nets), or VGG_ILSVRC_16_layers with --backbone vgg16")


@dataclass
class CaffeImport:
    """Result of :func:`fcn_from_caffe`: the model, what it is, and notes for the user."""

    model: nn.Module
    description: str
    notes: list[str] = field(default_factory=list)


def _weights_and_biases(net, targets: dict[str, str], own: dict[str, torch.Tensor],
                        hint: str = "") -> dict[str, torch.Tensor]:
    """Caffe layer ``name`` -> fcnseg ``target.weight`` / ``target.bias``, each checked against the
    shape of ``own`` (the fcnseg model's state dict); a layer without exactly 2 blobs is refused."""
    sd: dict[str, torch.Tensor] = {}
    for name, target in targets.items():
        blobs = net.arrays(name)
        if len(blobs) != 2:
            raise CheckpointError(f"{net.caffemodel}: layer {name} has {len(blobs)} blobs, expected 2 "
                                  f"(weights and bias){hint}")
        for blob, param in zip(blobs, ("weight", "bias")):
            key = f"{target}.{param}"
            sd[key] = torch.from_numpy(_fit(blob, tuple(own[key].shape), f"{name} ({param})", net.caffemodel))
    return sd


def _fit(a: np.ndarray, want: tuple[int, ...], where: str, source: Path) -> np.ndarray:
    """``a`` reshaped to ``want`` if it is the same tensor in another Caffe layout, else an error.

    Accepted: the exact shape; legacy 4-D blobs (leading 1s: biases (1, 1, 1, C), InnerProduct
    weights (1, 1, O, I)); an InnerProduct weight (O, C*kh*kw) for a conv (O, C, kh, kw),
    whose row-major flattening is exactly the conv kernel's.
    """
    if a.shape == want:
        return a
    if strip_ones(a.shape) == strip_ones(want):
        return a.reshape(want)
    if len(want) == 4 and strip_ones(a.shape) == (want[0], int(np.prod(want[1:]))):
        return a.reshape(want)
    raise CheckpointError(f"{source}: layer {where} has shape {a.shape} but fcnseg's VGG16 layer needs "
                          f"{want}; this file is not one of the supported nets ({SUPPORTED})")


def _is_bilinear(w: np.ndarray) -> bool:
    if w.ndim != 4 or w.shape[0] != w.shape[1] or w.shape[2] != w.shape[3]:
        return False  # not even the shape of one (the shape check then says what is wrong)
    return np.allclose(w, bilinear_kernel(w.shape[0], w.shape[2]).numpy(), rtol=0, atol=1e-6)


def _infer_variant(net: CaffeNet) -> tuple[str, bool]:
    """(variant, at_once) from the names of the layers with weights."""
    names = net.param_layer_names()
    if "score_fr" not in names:
        if {"conv1_1", "fc7"} <= names <= {*VGG16_CONVS, "fc6", "fc7", "fc8"}:
            raise net.fail("a VGG16 classifier (layers conv1_1..fc7, no score_fr), not an FCN: import its "
                           "backbone with --backbone vgg16 and train with --backbone-weights")
        if "conv1" in names:
            raise net.fail("layers conv1..conv5: an AlexNet/CaffeNet-style net, which fcnseg cannot import; "
                           f"supported: {SUPPORTED}")
        raise net.fail(f"unknown net: no layer named score_fr (layers with weights: "
                       f"{', '.join(sorted(names)[:8])}{', ...' if len(names) > 8 else ''}); supported: {SUPPORTED}")
    variant = "8s" if "score_pool3" in names else "16s" if "score_pool4" in names else "32s"
    at_once = bool(names & set(SCALE_LAYERS))
    expected = {*VGG16_CONVS, "fc6", "fc7", "score_fr", FINAL_UPSCORE[variant], *SKIP_LAYERS.get(variant, ())}
    if at_once:
        expected |= {s for s, (fed, _) in SCALE_LAYERS.items() if fed in expected}
    missing, extra = sorted(expected - names), sorted(names - expected)
    if missing or extra:
        kind = f"FCN-{variant}{' at-once' if at_once else ''}"
        raise net.fail(f"layers do not match {kind} on VGG16 (missing: {', '.join(missing) or 'none'}; "
                       f"unexpected: {', '.join(extra) or 'none'}); supported: {SUPPORTED}")
    if net.from_prototxt:
        lacking, stray = sorted(names - set(net.weights)), sorted(set(net.weights) - names)
        if lacking or stray:
            problems = [f"no weights for layer(s) {', '.join(lacking)} that {net.structure_src.name} has"] * bool(lacking)
            problems += [f"weights for layer(s) {', '.join(stray)} that it lacks"] * bool(stray)
            raise CheckpointError(f"{net.caffemodel}: {'; '.join(problems)}; the caffemodel and prototxt do not "
                                  f"belong together: pass the caffemodel trained with this net")
    return variant, at_once


def _deconv_weight(net: CaffeNet, name: str, num_classes: int) -> np.ndarray:
    """A Deconvolution's (in, out/group, k, k) weight as the dense (C, C, k, k) ConvTranspose2d one."""
    blobs = net.arrays(name)
    if len(blobs) != 1:
        raise CheckpointError(f"{net.caffemodel}: layer {name} has {len(blobs)} blobs; the reference nets' "
                              f"upsampling has weights only (bias_term: false)")
    w = blobs[0]
    if w.ndim == 4 and w.shape[0] == num_classes and w.shape[1] == 1 and num_classes > 1:
        dense = np.zeros((num_classes, num_classes, *w.shape[2:]), np.float32)  # group: C, per class
        dense[np.arange(num_classes), np.arange(num_classes)] = w[:, 0]
        return dense
    return w


def _check_geometry(net: CaffeNet, model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Every conv/deconv/pool and crop of the net's structure against fcnseg's model."""
    for name, module in modules.items():
        layer = net.layer(name)
        p = layer.param("convolution_param") if layer is not None else None
        if p is None:
            continue  # an InnerProduct fc6/fc7, or a caffemodel without layer parameters
        got = conv_geometry(p)
        want = {"kernel": tuple(module.kernel_size), "stride": tuple(module.stride),
                "pad": tuple(module.padding), "dilation": tuple(module.dilation), "group": module.groups}
        if got["kernel"] == (0, 0):
            got["kernel"] = want["kernel"]  # not stated: the blob's shape is checked instead
        if isinstance(module, nn.ConvTranspose2d) and got["group"] == module.weight.shape[0]:
            got["group"] = 1  # per-class kernels, expanded to the dense diagonal equivalent
        for key, value in got.items():
            if value != want[key]:
                raise net.fail(f"layer {name} has {key} {value} but the reference FCN-VGG16 (caffe geometry: "
                               f"conv1_1 pad 100) has {want[key]}; fcnseg imports the published nets' geometry only")
    for name in VGG16_POOLS:  # fcnseg's: nn.MaxPool2d(2, 2, ceil_mode=True), Caffe's rounding
        layer = net.layer(name)
        p = layer.param("pooling_param") if layer is not None else None
        if p is not None:
            got = pool_geometry(p)
            if got != {"pool": "MAX", "kernel": (2, 2), "stride": (2, 2), "pad": (0, 0)}:
                raise net.fail(f"layer {name} is {got}; the reference VGG16 max-pools 2x2 with stride 2")
    for layer in net.structure:
        if layer.type != "Crop":
            continue
        p = layer.param("crop_param")
        key = layer.bottom[0] if layer.bottom else "?"
        if key not in model.crop_offsets:
            raise net.fail(f"Crop layer {layer.name} crops '{key}', which the reference FCN does not crop")
        offsets = list(p.offset) if p is not None else []
        want = model.crop_offsets[key]
        axis = p.axis if p is not None else 2
        if offsets and (axis != 2 or any(o != want for o in offsets)):
            raise net.fail(f"Crop layer {layer.name} has axis {axis}, offset {offsets}; fcnseg's "
                           f"{model.fcn_config['name']} crops {key} at axis 2 by {want} (derived from the "
                           f"layers' geometry): the net is not the reference one")


def fcn_from_caffe(caffemodel: str | os.PathLike, prototxt: str | os.PathLike | None = None) -> CaffeImport:
    """Build the fcnseg FCN for a reference FCN-VGG16 caffemodel, with its weights loaded.

    Raises CheckpointError (one line naming the file, what is wrong and the fix) for a
    non-Caffe or truncated file, a net other than the supported ones, or a prototxt whose
    layers, shapes or geometry do not match.
    """
    net = CaffeNet(caffemodel, prototxt)
    variant, at_once = _infer_variant(net)
    num_classes = outputs(net.arrays("score_fr")[0])
    fc_width = outputs(net.arrays("fc6")[0])
    ups = [*(u for u in X2_UPSCORES if u in SKIP_LAYERS.get(variant, ())), FINAL_UPSCORE[variant]]
    deconv = {u: _deconv_weight(net, u, num_classes) for u in ups}
    if not all(_is_bilinear(deconv[u]) for u in ups[-1:]):
        upsampling = "learned"
    elif not all(_is_bilinear(deconv[u]) for u in ups[:-1]):
        upsampling = "paper"
    else:
        upsampling = "fixed"
    model = build_model(f"fcn{variant}_vgg16", num_classes=num_classes, geometry="caffe", upsampling=upsampling,
                        at_once=at_once, input_convention="caffe",
                        **({} if fc_width == 4096 else {"fc_width": fc_width}))
    convs = [(i, m) for i, m in enumerate(model.backbone.features) if isinstance(m, nn.Conv2d)]
    targets: dict[str, str] = {name: f"backbone.features.{i}" for name, (i, _) in zip(VGG16_CONVS, convs)}
    targets.update({"fc6": "backbone.fc6", "fc7": "backbone.fc7", "score_fr": "score_fr"})
    targets.update({n: n for n in SKIP_LAYERS.get(variant, ()) if n.startswith("score")})
    modules = {name: model.get_submodule(t) for name, t in targets.items()}
    modules.update({u: model.get_submodule(u) for u in ups})
    _check_geometry(net, model, modules)

    own = model.state_dict()
    sd = _weights_and_biases(net, targets, own, "; the file is not one of the supported nets")
    for u in ups:
        sd[f"{u}.weight"] = torch.from_numpy(_fit(deconv[u], tuple(own[f"{u}.weight"].shape), u, net.caffemodel))
    notes = []
    for scale_name, (fed, stride) in SCALE_LAYERS.items():
        if not at_once or fed not in targets:
            continue
        (s, *rest) = net.arrays(scale_name)
        if rest:
            raise CheckpointError(f"{net.caffemodel}: layer {scale_name} has a bias; the at-once nets' Scale "
                                  f"layers scale only (bias_term: false)")
        s = _fit(s, (own[f"{fed}.weight"].shape[1],), scale_name, net.caffemodel)
        if not np.all(s == np.float32(AT_ONCE_SCALE[stride])):
            # score(s * x) = (W diag(s)) x + b for a 1x1 conv: fold s / fcnseg's constant into W
            ratio = torch.from_numpy(s.astype(np.float64) / AT_ONCE_SCALE[stride])
            w = sd[f"{fed}.weight"]
            sd[f"{fed}.weight"] = (w.double() * ratio[None, :, None, None]).float()
            notes.append(f"{scale_name}: per-channel scale folded into {fed}")
    load_state_dict_checked(model, sd, source=str(net.caffemodel))
    model.eval()
    name = f"FCN-{variant}{' at-once' if at_once else ''}"
    desc = (f"{name} on VGG16 ({model.fcn_config['name']}), {num_classes} classes, caffe geometry, "
            f"{upsampling} upsampling, input convention caffe")
    return CaffeImport(model, desc, notes)


def backbone_from_caffe(caffemodel: str | os.PathLike, prototxt: str | os.PathLike | None = None,
                        arch: str = "vgg16") -> dict[str, Any]:
    """VGG16 backbone weights from a Caffe VGG16 (or FCN-VGG16) caffemodel, V1 or current format.

    Returns the backbone file's contents::

        {"format": "fcnseg-backbone", "format_version": 1, "arch": "vgg16",
         "input_convention": "caffe", "state_dict": {"features.0.weight": ..., "fc6.weight": ...},
         "source": {...}}

    ``state_dict`` is fcnseg's backbone layout (torchvision's ``features.N`` names; fc6/fc7
    as 7x7/1x1 convs). ``build_model(..., backbone_weights=FILE)`` and ``fcnseg train
    --backbone-weights FILE`` read ``input_convention`` from it, so the model converts its
    standard input to Caffe's BGR 0-255 mean-subtracted values itself. The ImageNet
    classifier fc8 is dropped, as in the paper.
    """
    if arch != "vgg16":
        raise ConfigError(f"--backbone {arch}: only vgg16 can be imported from Caffe (the paper's "
                          f"VGG_ILSVRC_16_layers); CaffeNet/AlexNet's grouped convs differ from torchvision's")
    net = CaffeNet(caffemodel, prototxt)
    names = net.param_layer_names()
    missing = [n for n in (*VGG16_CONVS, "fc6", "fc7") if n not in names]
    if missing:
        raise net.fail(f"not a VGG16 net: no layer(s) {', '.join(missing)}; --backbone vgg16 takes "
                       f"VGG_ILSVRC_16_layers.caffemodel (or an FCN-VGG16 caffemodel)")
    fc_width = outputs(net.arrays("fc6")[0])
    backbone = BACKBONES["vgg16"](geometry="caffe", fc_width=fc_width)
    own = backbone.state_dict()
    convs = [(i, m) for i, m in enumerate(backbone.features) if isinstance(m, nn.Conv2d)]
    targets = {name: f"features.{i}" for name, (i, _) in zip(VGG16_CONVS, convs)}
    targets.update({"fc6": "fc6", "fc7": "fc7"})
    for name, target in targets.items():  # stride/dilation/group (pads differ by geometry)
        layer = net.layer(name)
        p = layer.param("convolution_param") if layer is not None else None
        if p is not None:
            g = conv_geometry(p)
            if (g["stride"], g["dilation"], g["group"]) != ((1, 1), (1, 1), 1):
                raise net.fail(f"layer {name} has stride {g['stride']}, dilation {g['dilation']}, "
                               f"group {g['group']}; VGG16's are 1, 1, 1: not a VGG16 net")
    sd = _weights_and_biases(net, targets, own)
    load_state_dict_checked(backbone, sd, source=str(net.caffemodel))
    ignored = sorted(set(net.weights) - set(targets))
    return {"format": "fcnseg-backbone", "format_version": 1, "arch": "vgg16", "input_convention": "caffe",
            "state_dict": sd,
            "source": {"importer": "caffe", "caffemodel": net.caffemodel.name,
                       "sha256": sha256(net.caffemodel), "ignored_layers": ignored}}


# --------------------------------------------------------------------------- CLI

def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--caffemodel", required=True, metavar="FILE", help="binary Caffe weights (.caffemodel)")
    p.add_argument("--prototxt", metavar="FILE",
                   help="the net's .prototxt (e.g. deploy.prototxt), checked against the weights; "
                        "without it the variant comes from the caffemodel's layer names")
    p.add_argument("--backbone", choices=["vgg16"],
                   help="write backbone weights for --backbone-weights (e.g. from VGG_ILSVRC_16_layers."
                        "caffemodel) instead of an FCN checkpoint")
    p.add_argument("--out", required=True, metavar="FILE", help="output file (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run_import(args: argparse.Namespace) -> int:
    """``fcnseg import caffe``: write the checkpoint (or backbone file) atomically; print what it is."""
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name such as {out / 'model.pt'}")
    if args.backbone:
        content = backbone_from_caffe(args.caffemodel, args.prototxt, args.backbone)
        atomic_save_torch(content, out)
        print(f"fcnseg import: wrote {args.backbone} backbone weights (input convention caffe) from "
              f"{args.caffemodel} to {out}\n  use: fcnseg train --model fcn8s_vgg16 --backbone-weights {out} ... "
              f"(the model converts its input to Caffe's BGR 0-255 minus mean itself)")
        return 0
    result = fcn_from_caffe(args.caffemodel, args.prototxt)
    save_fcn_checkpoint(result, args.caffemodel, out, args.prototxt)
    for note in result.notes:
        print(f"fcnseg import: note: {note}")
    print(f"fcnseg import: wrote {out}: {result.description}\n"
          f"  use: fcnseg predict --checkpoint {out} photo.jpg --out preds")
    return 0


def save_fcn_checkpoint(result: CaffeImport, caffemodel: str | os.PathLike, out: str | os.PathLike,
                        prototxt: str | os.PathLike | None = None) -> None:
    """Write an imported FCN as an ordinary fcnseg checkpoint (atomically), with names and palette."""
    n = result.model.num_classes
    if n == len(VOC_CLASSES):
        names = list(VOC_CLASSES)
    else:
        names = class_names_or_default(None, n)
        result.notes.append(f"{n} classes (not PASCAL VOC's 21): generic class names were written")
    save_checkpoint(out, result.model, class_names=names, palette=[list(c) for c in default_palette(n)],
                    source={"importer": "caffe", "caffemodel": Path(caffemodel).name,
                            "sha256": sha256(Path(caffemodel)),
                            "prototxt": Path(prototxt).name if prototxt else None,
                            "description": result.description})
