"""The runner contract: what whole-image and tiled segmentation run, whatever the runtime.

A *runner* has ``num_classes`` (and optionally ``class_names``, ``palette``) and maps
``float32 (B, 3, h, w)`` ImageNet-normalised images to ``float32 (B, C, h, w)`` logits, as
numpy arrays. :class:`fcnseg.infer.torch_runner.TorchRunner` wraps an ``nn.Module``,
:class:`fcnseg.infer.onnx_runner.OnnxModel` an onnxruntime session,
:class:`fcnseg.infer.openvino_runner.OpenVinoModel` an OpenVINO compiled model.
"""
from __future__ import annotations

import sys
from typing import Protocol

import numpy as np

from fcnseg.errors import ConfigError


class Runner(Protocol):
    """What segmentation runs: ``num_classes`` and numpy logits for numpy images."""

    num_classes: int

    def __call__(self, x: np.ndarray) -> np.ndarray:  # (B,3,h,w) f32 -> (B,C,h,w) f32
        ...


def as_runner(model, precision: str = "auto") -> Runner:
    """Accept a runner, or an ``nn.Module`` (wrapped in a :class:`~fcnseg.infer.torch_runner.TorchRunner`
    running in ``precision``: ``auto``, ``fp32``, ``bf16``; ``int8`` needs an int8-exported model).

    A runner keeps its own precision (an exported model is what it was exported as); asking
    it for another one is a ConfigError.
    """
    if getattr(model, "is_fcnseg_runner", False):
        check_runner_precision(model, precision)
        return model
    torch = sys.modules.get("torch")  # a Module can only exist if torch is already imported
    if torch is not None and isinstance(model, torch.nn.Module):
        # Lazy: torch_runner imports torch, which the ONNX path must never load.
        from fcnseg.infer.torch_runner import TorchRunner

        return TorchRunner(model, precision=precision)
    raise TypeError(f"expected an fcnseg model (nn.Module from fcnseg.load_model / build_model, or an exported "
                    f"model's OnnxModel or OpenVinoModel), got {type(model).__name__}")


def check_runner_precision(runner, precision: str) -> None:
    """ConfigError if ``precision`` (other than ``auto``) is not what ``runner`` computes in."""
    have = getattr(runner, "precision", "fp32")
    if precision not in ("auto", have):
        fix = ("export one with `fcnseg export --int8 --calib-data DATA`" if precision == "int8"
               else "use the .pt checkpoint for fp32/bf16")
        raise ConfigError(f"--precision {precision}: {getattr(runner, 'path', 'this model')} is a "
                          f"{have} model; {fix}, or pass --precision auto")
