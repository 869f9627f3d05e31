"""Torch files, read and written safely: ``torch.load(weights_only=True)`` / safetensors, atomic saves.

A leaf of the package (it imports only torch, :mod:`fcnseg.errors`, :mod:`fcnseg.optional` and
:mod:`fcnseg.outputs`),
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
from fcnseg.optional import require
from fcnseg.outputs import atomic_write


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes a clear CheckpointError.

    Also reads ``.safetensors`` files. Never executes code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; check the path to the checkpoint/weights")
    head = _read_head(path)
    if path.suffix == ".safetensors":
        load_file = require("safetensors.torch", f"reading {path} (.safetensors)").load_file
        try:
            return load_file(str(path), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    _check_torch_magic(path, head)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # A real pickle (the magic bytes were checked above) whose globals are not allowed.
        raise CheckpointError(
            f"{path}: refused to load: the file contains Python objects that are not plain "
            f"tensors/containers, and loading them could execute code ({_first_line(e)}). "
            f"Only load files you trust; re-save the weights as a plain state dict.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable PyTorch file ({type(e).__name__}: {_first_line(e)}); "
            f"it may be truncated or corrupt. Use an earlier checkpoint or re-download the weights.") from None


# Leading bytes of files users mistake for checkpoints -> what to call them in the error.
_KNOWN_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
    (b"\x08", "an ONNX model or another protobuf file"), (b"\x1f\x8b", "a gzip archive"),
    (b"%PDF", "a PDF document"), (b"<", "an HTML/XML document"), (b"{", "a JSON/text file"),
)


def _read_head(path: Path) -> bytes:
    """The first 16 bytes of ``path``; an empty or unreadable file is a CheckpointError."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e}); check its permissions") from None
    if not head:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; it was probably cut off "
                              f"while being written or copied: use another checkpoint or copy it again")
    return head


def _check_torch_magic(path: Path, head: bytes) -> None:
    """Refuse, by its first bytes, a file that cannot be a PyTorch file, before torch.load.

    ``torch.save`` writes a zip archive (``PK\\x03\\x04``, torch >= 1.6) or, in the legacy
    format, a pickle (protocol >= 2 starts with ``\\x80``). Anything else would reach the
    unpickler and be misreported as an unsafe pickle.
    """
    if head.startswith(b"PK\x03\x04") or head[0] == 0x80:
        return
    kind = next((name for magic, name in _KNOWN_MAGIC if head.startswith(magic)), None)
    if kind is None:
        kind = "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "unknown bytes"
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (looks like {kind}); give a .pt/.pth file "
                          f"written by fcnseg train or torch.save")


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type name."""
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`fcnseg.outputs.atomic_write` (a kill leaves the old file)."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
