"""Torch files, read and written safely: ``torch.load(weights_only=True)`` / safetensors, atomic saves.

A leaf of the package (it imports only torch, :mod:`fcnseg.errors` and :mod:`fcnseg.outputs`),
so that checkpoints (:mod:`fcnseg.checkpoint`) and backbone weights
(:mod:`fcnseg.models.surgery`) load through one function without importing each other.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from fcnseg.errors import CheckpointError
from fcnseg.outputs import atomic_write


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes a clear CheckpointError.

    Also reads ``.safetensors`` files. Never executes code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path to the checkpoint/weights")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file  # optional dependency: only .safetensors files need it
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


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`fcnseg.outputs.atomic_write` (a kill leaves the old file)."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
