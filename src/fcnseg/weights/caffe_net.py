"""A Caffe net as fcnseg reads it: its layers (current and V1 format alike), their blobs as
arrays, and the structure (a prototxt, or the caffemodel's own layer parameters) to check them
against.

- :class:`CaffeNet`: a ``.caffemodel``'s weights by layer name, plus the layers of its structure.
- :func:`net_layers`: a NetParameter's layers as :class:`CaffeLayer` (V1 enum types upgraded to
  the current type strings).
- :func:`conv_geometry` / :func:`pool_geometry`: a layer's kernel, stride, pad, ... as (h, w).
- :func:`outputs`, :func:`strip_ones`: blob shapes, legacy 4-D ``(1, 1, O, I)`` ones included.

numpy only (no torch). protobuf, an optional dependency (extra ``caffe``), is imported only when
a file is read: :func:`caffe_proto` turns its absence into one line with the install hint.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fcnseg.errors import CheckpointError, ConfigError

# layer types that carry weights (blobs) in a net description
PARAM_TYPES = {"Convolution", "Deconvolution", "InnerProduct", "Scale", "Bias", "BatchNorm", "PReLU", "Embed"}


@dataclass
class CaffeLayer:
    """One layer of either net format: ``type`` is the current string type (V1 enums upgraded)."""

    name: str
    type: str
    bottom: list[str]
    blobs: list[Any]
    msg: Any  # the LayerParameter / V1LayerParameter, for its *_param fields

    def param(self, name: str) -> Any | None:
        """The layer's ``name`` sub-message (e.g. ``convolution_param``) if set, else None."""
        if name not in self.msg.DESCRIPTOR.fields_by_name or not self.msg.HasField(name):
            return None
        return getattr(self.msg, name)


def caffe_proto() -> ModuleType:
    """The protobuf message classes of :mod:`fcnseg.weights.caffe_proto` (ConfigError without protobuf)."""
    try:
        # Lazy: protobuf is an optional dependency (extra "caffe"), needed only when a file is read.
        from fcnseg.weights import caffe_proto as proto
    except ImportError as e:
        raise ConfigError(f"reading Caffe files needs the protobuf package ({e}); "
                          f"install it with: pip install 'fcnseg[caffe]'") from None
    return proto


def net_layers(net: Any) -> list[CaffeLayer]:
    """The layers of a NetParameter, current (``layer``) and V1 (``layers``) alike."""
    cp = caffe_proto()
    layers = [CaffeLayer(l.name, l.type, list(l.bottom), list(l.blobs), l) for l in net.layer]
    enum = cp.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"]
    for l in net.layers:
        v1 = enum.values_by_number[l.type].name if l.type in enum.values_by_number else str(l.type)
        layers.append(CaffeLayer(l.name, cp.V1_TYPE_NAMES.get(v1, v1), list(l.bottom), list(l.blobs), l))
    return layers


def conv_geometry(p: Any) -> dict[str, tuple[int, int] | int]:
    """kernel, stride, pad, dilation (each (h, w)) and group of a ConvolutionParameter."""
    def pair(rep, h, w, default):
        if p.HasField(h) or p.HasField(w):
            return int(getattr(p, h)), int(getattr(p, w))
        v = list(rep) or [default]
        return int(v[0]), int(v[-1])

    dil = list(p.dilation) or [1]
    return {"kernel": pair(p.kernel_size, "kernel_h", "kernel_w", 0),
            "stride": pair(p.stride, "stride_h", "stride_w", 1),
            "pad": pair(p.pad, "pad_h", "pad_w", 0),
            "dilation": (int(dil[0]), int(dil[-1])), "group": int(p.group)}


def pool_geometry(p: Any) -> dict[str, Any]:
    """pool method (``"MAX"``, ...), kernel, stride and pad (each (h, w)) of a PoolingParameter."""
    def pair(v, h, w):
        return (int(getattr(p, h)), int(getattr(p, w))) if p.HasField(h) or p.HasField(w) else (int(v), int(v))

    return {"pool": "MAX" if p.pool == 0 else "AVE" if p.pool == 1 else "STOCHASTIC",
            "kernel": pair(p.kernel_size, "kernel_h", "kernel_w"),
            "stride": pair(p.stride, "stride_h", "stride_w"), "pad": pair(p.pad, "pad_h", "pad_w")}


def strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its leading 1s (legacy blobs: a bias (1, 1, 1, C) -> (C,)); keeps the last."""
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return tuple(shape[i:])


def outputs(weight: np.ndarray) -> int:
    """Output channels of a conv/InnerProduct weight, legacy (1, 1, O, I) blobs included."""
    return int(strip_ones(weight.shape)[0])


def sha256(path: Path) -> str:
    """The file's SHA-256 (hex), read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class CaffeNet:
    """A caffemodel's weights plus the structure to check them against (prototxt or its own).

    ``weights``: layer name -> the caffemodel's layer (those with blobs); ``structure``: the
    layers of the prototxt if one is given, else the caffemodel's own (``structure_src`` names
    the file the structure came from, for errors).
    """

    def __init__(self, caffemodel: str | os.PathLike, prototxt: str | os.PathLike | None) -> None:
        cp = caffe_proto()
        self.caffemodel = Path(caffemodel)
        layers = net_layers(cp.read_caffemodel(self.caffemodel))
        self.weights = {l.name: l for l in layers if l.blobs}
        if not self.weights:
            raise CheckpointError(f"{self.caffemodel}: no layer holds weights; this is a net description, "
                                  f"not trained weights: pass the .caffemodel to --caffemodel")
        self.structure_src = Path(prototxt) if prototxt else self.caffemodel
        self.structure = net_layers(cp.read_prototxt(prototxt)) if prototxt else layers
        self.from_prototxt = prototxt is not None
        self.cp = cp

    def param_layer_names(self) -> set[str]:
        """Names of the layers that have weights: by type in a prototxt, by blobs in a caffemodel."""
        if self.from_prototxt:
            return {l.name for l in self.structure if l.type in PARAM_TYPES}
        return set(self.weights)

    def arrays(self, name: str) -> list[np.ndarray]:
        """The blobs of layer ``name`` as float32 arrays (CheckpointError if it has none)."""
        layer = self.weights.get(name)
        if layer is None:
            raise CheckpointError(f"{self.caffemodel}: no weights for layer '{name}' (which "
                                  f"{self.structure_src.name} has); the caffemodel and prototxt do not belong "
                                  f"together: pass the caffemodel trained with this net")
        return [self.cp.blob_to_array(b, f"{self.caffemodel}: layer {name} blob {i}")
                for i, b in enumerate(layer.blobs)]

    def layer(self, name: str) -> CaffeLayer | None:
        """Layer ``name`` of the structure, or None."""
        return next((l for l in self.structure if l.name == name), None)

    def fail(self, what: str) -> CheckpointError:
        """An error about the net's structure, naming the file it came from."""
        return CheckpointError(f"{self.structure_src}: {what}")
