"""Checkpoint format, safe loading, and model reconstruction.

A checkpoint is a plain dict of tensors and builtins (so ``torch.load(weights_only=True)``
can read it without unpickling arbitrary objects)::

    {
      "format": "fcnseg-checkpoint", "format_version": 1, "fcnseg_version": "0.1.0",
      "model": {"name": "fcn8s_vgg16", "num_classes": 21, "geometry": "modern", ...},  # build_model kwargs
      "state_dict": {...},                       # model weights
      "class_names": ["background", ...], "palette": [[0, 0, 0], ...],
      "epoch": int, "step": int, "best_miou": float | None, "metrics": {...},
      "config": {...},                           # resolved training config
      "optimizer": {...}, "scheduler": {...}, "rng": {...},   # only in resumable checkpoints
    }
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from fcnseg.errors import CheckpointError
from fcnseg.fileio import atomic_save_torch

FORMAT = "fcnseg-checkpoint"
FORMAT_VERSION = 1


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes a clear CheckpointError.

    Also reads ``.safetensors`` files. Never executes code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path to the checkpoint/weights")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading .safetensors needs `pip install safetensors`") from None
        try:
            return load_file(str(path), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file contains Python objects that are not plain "
            f"tensors/containers, and loading them could execute code ({str(e).splitlines()[0][:200]}). "
            f"Only load files you trust; re-save the weights as a plain state dict.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable PyTorch file ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"it may be truncated or corrupt. Use an earlier checkpoint or re-download the weights.") from None


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, **fields: Any) -> None:
    """Write a checkpoint atomically. ``model`` must come from :func:`fcnseg.build_model`
    (it carries ``model.fcn_config``); ``fields`` are the other keys of the format."""
    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fcnseg_version": _version(),
        "model": dict(model.fcn_config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    ckpt.update(fields)
    atomic_save_torch(ckpt, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate an fcnseg checkpoint (safely)."""
    ckpt = safe_torch_load(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an fcnseg checkpoint (no 'format': '{FORMAT}' entry). To use plain "
            f"backbone/classifier weights, pass them as backbone_weights= / --backbone-weights.")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer fcnseg (format {ckpt['format_version']}); upgrade fcnseg")
    for key in ("model", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'; it is incomplete or corrupt")
    return ckpt


def model_from_checkpoint(ckpt: dict | str | os.PathLike, *, num_classes: int | None = None,
                          name: str | None = None, map_location: str = "cpu") -> torch.nn.Module:
    """Rebuild the model described in a checkpoint and load its weights (strictly).

    ``num_classes``/``name``, when given, are what the caller expects: a checkpoint for a
    different model or class count is refused with an error saying which.
    """
    from fcnseg.models import build_model, load_state_dict_checked

    source = str(ckpt) if not isinstance(ckpt, dict) else "checkpoint"
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, map_location)
    cfg = dict(ckpt["model"])
    if name is not None and cfg.get("name") != name:
        raise CheckpointError(f"{source}: checkpoint is for model '{cfg.get('name')}', not '{name}'")
    if num_classes is not None and cfg.get("num_classes") != num_classes:
        raise CheckpointError(
            f"{source}: checkpoint has {cfg.get('num_classes')} classes but the data has {num_classes}; "
            f"use a checkpoint trained on this label set (or start from backbone weights)")
    model_name = cfg.pop("name")
    cfg.pop("backbone_weights", None)
    # Checkpoints from before input conventions were recorded all used the standard input.
    cfg.setdefault("input_convention", "imagenet")
    model = build_model(model_name, **cfg)
    load_state_dict_checked(model, ckpt["state_dict"], source=source)
    return model


def _version() -> str:
    from fcnseg import __version__

    return __version__
