"""Run an exported fcnseg OpenVINO IR with OpenVINO, without torch (a runner of :mod:`fcnseg.infer.runner`).

``fcnseg export --format openvino`` writes ``model.xml`` (the graph) and ``model.bin`` (its
weights) beside it: one input ``image`` (float32 (B, 3, H, W), ImageNet-normalised), one
output ``logits`` (float32 (B, C, H, W)), B/H/W dynamic. The fcnseg metadata is the ONNX
export's (the same ``META_*`` keys and JSON strings of :mod:`fcnseg.infer.onnx_runner`),
stored in the IR's rt_info under ``fcnseg`` (``<rt_info><fcnseg><fcnseg.class_names value=...>``),
so a deployment needs only the two files, numpy, Pillow and openvino.

The model is compiled once for the CPU with ``INFERENCE_PRECISION_HINT f32``: without it,
OpenVINO runs fp32 graphs in bf16 on CPUs with AMX (inexact); an int8 model's int8 comes from
its quantised graph (``fcnseg export --format openvino --int8``), not from the hint.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from fcnseg.errors import CheckpointError, ConfigError
from fcnseg.infer.onnx_runner import (META_CLASS_NAMES, META_FORMAT, META_INT8, META_MODEL, META_NORMALIZATION,
                                      META_PALETTE, META_PRECISION, META_VERSION, metadata_json)
from fcnseg.optional import require

OPENVINO_FORMAT = "fcnseg-openvino"  # META_FORMAT of an IR written by fcnseg export --format openvino
RT_INFO_SECTION = "fcnseg"           # rt_info path of the metadata: [RT_INFO_SECTION, META_* key]
META_KEYS = (META_FORMAT, META_VERSION, META_CLASS_NAMES, META_PALETTE, META_MODEL, META_NORMALIZATION,
             META_PRECISION, META_INT8)


def import_openvino():
    """The openvino module, or a ConfigError (MissingDependencyError) saying how to install it."""
    return require("openvino", "running an OpenVINO model")


def set_metadata(model, metadata: dict[str, str]) -> None:
    """Store ``metadata`` (META_* key -> JSON string) in an ``openvino.Model``'s rt_info."""
    for k, v in metadata.items():
        model.set_rt_info(str(v), [RT_INFO_SECTION, k])


def read_metadata(model) -> dict[str, str]:
    """The fcnseg metadata (META_* key -> string) in an ``openvino.Model``'s rt_info; {} if none."""
    return {k: model.get_rt_info([RT_INFO_SECTION, k]).astype(str)
            for k in META_KEYS if model.has_rt_info([RT_INFO_SECTION, k])}


class OpenVinoModel:
    """An fcnseg runner over an OpenVINO compiled model (CPU).

    ``model(x)`` maps float32 (B, 3, h, w) normalised images to float32 (B, C, h, w) logits.
    Attributes as :class:`fcnseg.infer.onnx_runner.OnnxModel`: ``num_classes``, ``class_names``,
    ``palette`` (None if absent), ``config``, ``precision`` (``fp32`` or ``int8``), ``metadata``, ``path``.
    """

    is_fcnseg_runner = True

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        ov = import_openvino()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such OpenVINO model; check the path, or create it with "
                                  f"`fcnseg export --checkpoint CKPT --format openvino --out {self.path.name}`")
        weights = self.path.with_suffix(".bin")
        if not weights.is_file():
            raise CheckpointError(f"{self.path}: its weights {weights.name} are missing (an OpenVINO model is a "
                                  f".xml + .bin pair); put {weights.name} beside it or re-export the model")
        if device not in ("cpu", "auto"):
            raise ConfigError(f"--device {device}: the OpenVINO runtime runs on the CPU; use --device cpu, "
                              f"or --runtime torch/onnx for a GPU")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path), str(weights))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            raise CheckpointError(f"{self.path}: OpenVINO cannot read it ({type(e).__name__}: "
                                  f"{_first_line(e)}); re-export it with fcnseg export --format openvino") from None
        meta = read_metadata(model)
        if META_FORMAT not in meta:
            raise CheckpointError(f"{self.path}: not an fcnseg OpenVINO model (no fcnseg metadata in its rt_info); "
                                  f"export one with `fcnseg export --format openvino`")
        self.metadata = meta
        self.class_names = metadata_json(meta, META_CLASS_NAMES, self.path)
        self.palette = metadata_json(meta, META_PALETTE, self.path)
        self.config = metadata_json(meta, META_MODEL, self.path) or {}
        self.precision = meta.get(META_PRECISION, "fp32")  # what the graph computes in
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise CheckpointError(f"{self.path}: expected one input and one output, found {len(model.inputs)} and "
                                  f"{len(model.outputs)}; re-export it with fcnseg export --format openvino")
        channels = model.output(0).get_partial_shape()[1]  # (B, C, H, W): C static in our exports
        if channels.is_static:
            self.num_classes = channels.get_length()
        elif self.class_names:
            self.num_classes = len(self.class_names)
        else:
            raise CheckpointError(f"{self.path}: cannot tell the number of classes (dynamic channel "
                                  f"axis and no {META_CLASS_NAMES} metadata); re-export it")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise CheckpointError(f"{self.path}: metadata names {len(self.class_names)} classes but "
                                  f"the model outputs {self.num_classes}; re-export it")
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise CheckpointError(f"{self.path}: OpenVINO cannot compile it for the CPU ({type(e).__name__}: "
                                  f"{_first_line(e)})") from None
        # CompiledModel.__call__ reuses one infer request: one call at a time (fcnseg serve
        # shares a runner between request threads); OpenVINO itself uses all its threads.
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float32 (B, 3, h, w) -> float32 (B, C, h, w)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            # share_outputs=False (the default): the result is a copy, not the request's buffer.
            return self.compiled(x)[0]

    def __repr__(self) -> str:
        return f"OpenVinoModel({str(self.path)!r}, num_classes={self.num_classes}, precision={self.precision!r})"


def _first_line(e: Exception) -> str:
    lines = [s for s in str(e).splitlines() if s.strip()]
    return lines[0].strip()[:200] if lines else ""


__all__ = ["OpenVinoModel", "OPENVINO_FORMAT", "import_openvino", "read_metadata", "set_metadata"]
