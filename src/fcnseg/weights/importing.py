"""Plumbing shared by the importers: find the input, load it safely, write the checkpoint.

- :func:`resolve_input`: a path, or a catalog name/file name of the right kind (fetched into
  torch hub's cache).
- :func:`load_weights_file`: ``torch.load(weights_only=True)`` that also accepts NumPy scalars
  (pytorch-fcn stores ``best_mean_iu`` as ``numpy.float64``); anything else that needs
  unpickling of code is refused.
- :func:`check_out` / :func:`save_imported`: ``--out`` is never overwritten without
  ``--overwrite`` and is written atomically, as an ordinary fcnseg checkpoint.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fcnseg.checkpoint import save_checkpoint
from fcnseg.constants import VOC_CLASSES
from fcnseg.data.image_files import default_palette
from fcnseg.errors import CheckpointError, ConfigError
from fcnseg.torch_files import safe_torch_load
from fcnseg.weights.catalog import find_weights

# NumPy scalars, under both module paths (NumPy 1 pickles name numpy.core, NumPy 2
# numpy._core): they rebuild a number from a dtype and bytes and run no code.
try:
    from numpy._core.multiarray import scalar as _np_scalar  # NumPy >= 2
except ImportError:  # pragma: no cover - NumPy 1
    from numpy.core.multiarray import scalar as _np_scalar
_NUMPY_SAFE: list = [np.dtype, _np_scalar, (_np_scalar, "numpy.core.multiarray.scalar"),
                     (_np_scalar, "numpy._core.multiarray.scalar"),
                     *{type(np.dtype(t)) for t in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u1", "?")}]


def resolve_input(value: str, kind: str) -> Path:
    """``value`` as an existing file, or the local file of catalog entry ``value`` of ``kind``."""
    path = Path(value)
    if path.is_file():
        return path
    spec = find_weights(value)
    if spec is None:
        raise CheckpointError(f"{value}: no such file, and not a weights name; pass the file to import "
                              f"(`fcnseg weights --kind {kind}` lists the known ones)")
    if spec.kind != kind:
        raise CheckpointError(f"{value} is {spec.description}; use it with: {spec.use}")
    local = spec.resolve(spec, True)
    assert local is not None
    return local


def load_weights_file(path: Path) -> Any:
    """Safe load (``weights_only=True``; plain containers, tensors and NumPy scalars only)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if safe_globals is None:
        return safe_torch_load(path)
    with safe_globals(_NUMPY_SAFE):
        return safe_torch_load(path)


def check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """The ``--out`` path, refused when it exists (without ``overwrite``) or is a folder."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {out / 'model.pt'}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    return out


def voc_labels(num_classes: int) -> dict:
    """VOC class names and palette for a 21-class model; nothing otherwise (defaults apply)."""
    if num_classes != len(VOC_CLASSES):
        return {}
    return {"class_names": list(VOC_CLASSES), "palette": [list(c) for c in default_palette(num_classes)]}


def save_imported(model: nn.Module, out: Path, source: dict[str, str]) -> None:
    """Write ``model`` as an ordinary fcnseg checkpoint (atomic), recording where it came from."""
    save_checkpoint(out, model, imported_from={k: str(v) for k, v in source.items()},
                    **voc_labels(int(model.fcn_config["num_classes"])))


def add_common_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("file", metavar="FILE", help=f"{what}: a file, or its name in `fcnseg weights` "
                                                f"(downloaded into torch hub's cache)")
    p.add_argument("--out", required=True, help="fcnseg checkpoint to write (e.g. model.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
