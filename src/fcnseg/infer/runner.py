"""The runner contract: what whole-image and tiled segmentation run, whatever the runtime.

A *runner* has ``num_classes`` (and optionally ``class_names``, ``palette``) and maps
``float32 (B, 3, h, w)`` ImageNet-normalised images to ``float32 (B, C, h, w)`` logits, as
numpy arrays. :class:`fcnseg.infer.torch_runner.TorchRunner` wraps an ``nn.Module``,
:class:`fcnseg.infer.onnx_runner.OnnxModel` an onnxruntime session.
"""
from __future__ import annotations

import sys
from typing import Protocol

import numpy as np


class Runner(Protocol):
    """What segmentation runs: ``num_classes`` and numpy logits for numpy images."""

    num_classes: int

    def __call__(self, x: np.ndarray) -> np.ndarray:  # (B,3,h,w) f32 -> (B,C,h,w) f32
        ...


def as_runner(model) -> Runner:
    """Accept a runner, or an ``nn.Module`` (wrapped in a :class:`~fcnseg.infer.torch_runner.TorchRunner`)."""
    if getattr(model, "is_fcnseg_runner", False):
        return model
    torch = sys.modules.get("torch")  # a Module can only exist if torch is already imported
    if torch is not None and isinstance(model, torch.nn.Module):
        # Lazy: torch_runner imports torch, which the ONNX path must never load.
        from fcnseg.infer.torch_runner import TorchRunner

        return TorchRunner(model)
    raise TypeError(f"expected an fcnseg model (nn.Module from fcnseg.load_model / build_model, "
                    f"or fcnseg.infer.onnx_runner.OnnxModel), got {type(model).__name__}")
