"""Run an exported fcnseg ONNX model with onnxruntime, without torch (a runner of :mod:`fcnseg.infer.runner`).

``fcnseg export`` writes one input ``image`` (float32 (B, 3, H, W), ImageNet-normalised),
one output ``logits`` (float32 (B, C, H, W)), B/H/W dynamic, and the ``META_*``
metadata_props below (JSON strings: class names, palette, model config), so a deployment
needs only the .onnx file, numpy, Pillow and onnxruntime.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fcnseg.errors import CheckpointError, ConfigError
from fcnseg.optional import require

META_FORMAT = "fcnseg.format"            # "fcnseg-onnx"
META_VERSION = "fcnseg.version"          # fcnseg version that exported it
META_CLASS_NAMES = "fcnseg.class_names"  # ["background", ...]
META_PALETTE = "fcnseg.palette"          # [[0, 0, 0], ...]
META_MODEL = "fcnseg.model"              # build_model kwargs, incl. "name"
META_NORMALIZATION = "fcnseg.normalization"  # {"mean": [...], "std": [...], "scale": 1/255}
META_PRECISION = "fcnseg.precision"      # "int8" (fcnseg export --int8: the agreement with fp32 too); absent: fp32
META_INT8 = "fcnseg.int8"                # {"tool": ..., "calibration_images": N, "agreement": ...}
ONNX_FORMAT = "fcnseg-onnx"
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def import_onnxruntime():
    """The onnxruntime module, or a ConfigError (MissingDependencyError) saying how to install it."""
    return require("onnxruntime", "running an ONNX model")


class OnnxModel:
    """An fcnseg runner over an onnxruntime session.

    ``model(x)`` maps float32 (B, 3, h, w) normalised images to float32 (B, C, h, w) logits.
    Attributes: ``num_classes``, ``class_names``, ``palette`` (from the file's metadata;
    None if absent), ``path``.
    """

    is_fcnseg_runner = True

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file; check the path, or create it "
                                  f"with `fcnseg export --checkpoint CKPT --out {self.path.name}`")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(f"--device {device}: this onnxruntime has no CUDA provider; "
                                  f"install onnxruntime-gpu or use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        elif device not in ("cpu", "auto"):
            raise ConfigError(f"--device {device}: the ONNX runtime supports cpu or cuda")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # failures are raised as exceptions; no duplicate log spam
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # onnxruntime's error classes are not importable portably
            raise CheckpointError(f"{self.path}: onnxruntime cannot load it ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}); re-export it with fcnseg export") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)
        self.class_names = metadata_json(meta, META_CLASS_NAMES, self.path)
        self.palette = metadata_json(meta, META_PALETTE, self.path)
        self.config = metadata_json(meta, META_MODEL, self.path) or {}
        self.precision = meta.get(META_PRECISION, "fp32")  # what the graph computes in
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        channels = self.session.get_outputs()[0].shape[1]
        if isinstance(channels, int):
            self.num_classes = channels
        elif self.class_names:
            self.num_classes = len(self.class_names)
        else:
            raise CheckpointError(f"{self.path}: cannot tell the number of classes (dynamic channel "
                                  f"axis and no {META_CLASS_NAMES} metadata); re-export with fcnseg export")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise CheckpointError(f"{self.path}: metadata names {len(self.class_names)} classes but "
                                  f"the model outputs {self.num_classes}; re-export it")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float32 (B, 3, h, w) -> float32 (B, C, h, w)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, num_classes={self.num_classes})"


def metadata_json(meta: dict, key: str, path: Path):
    """The JSON value of ``meta[key]`` (an exported model's fcnseg metadata; shared by the ONNX and
    OpenVINO runners), None if absent, a CheckpointError naming ``path`` if it is not JSON."""
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: metadata {key} is not valid JSON; re-export the model") from None
