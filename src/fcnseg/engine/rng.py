"""Seeds, RNG state capture/restore (for exact resume), and deterministic mode.

RNG states are stored in checkpoints as tensors and plain tuples only, so that
``torch.load(weights_only=True)`` can read them back (a NumPy array would need an
unpickling allow-list).
"""
from __future__ import annotations

import contextlib
import os
import random
import warnings
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool, device_type: str) -> None:
    """Turn deterministic algorithms on (bit-identical CPU runs) or pick fast ones.

    On CUDA a few kernels (e.g. bilinear upsampling backward) have no deterministic
    implementation; there deterministic mode warns instead of failing (best effort).
    """
    if enabled:
        reproducible_mkl()
        if device_type == "cuda":
            # Required by cuBLAS for deterministic matmuls; must be set before the first cuBLAS call.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device_type == "cuda")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.use_deterministic_algorithms(False)
        # Input sizes are fixed by the crop, so cuDNN's autotuner pays off after step 1.
        torch.backends.cudnn.benchmark = device_type == "cuda"


def reproducible_mkl() -> None:
    """Put Intel MKL in strict conditional-numerical-reproducibility mode (``MKL_CBWR``).

    Without it MKL's GEMMs (torch uses them for some convolutions and their backward on CPU)
    may take different code paths depending on how the operands happen to be aligned in
    memory, so two identical runs can differ in the last bit. MKL reads the variable at its
    first call, so this must run before any computation: ``fcnseg train --deterministic``
    calls it before importing the training code. A value the user set is kept.
    """
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device_type: str) -> Iterator[None]:
    """:func:`set_deterministic` for the duration of a ``with`` block; the previous global
    settings are restored afterwards (so that ``train()`` does not leak them into the caller)."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    set_deterministic(enabled, device_type)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]


def capture_rng_state() -> dict:
    """States of ``random``, NumPy, torch CPU and CUDA generators (checkpoint-safe types)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn("checkpoint was saved with a different number of GPUs; CUDA RNG not restored",
                          stacklevel=2)


def _tuples(x):
    # random.setstate needs tuples; a checkpoint round trip may turn them into lists.
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
