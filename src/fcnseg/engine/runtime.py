"""Device, mixed precision, and the code/runtime version recorded with every run."""
from __future__ import annotations

import contextlib
import platform
import subprocess
from pathlib import Path

import torch

from fcnseg.errors import ConfigError

AMP_MODES = ("auto", "off", "bf16", "fp16")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA GPU is available; use --device cpu (or auto)")
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown --device {name!r}; choose auto, cpu or cuda")


def _cpu_has_fast_bf16() -> bool:
    # AMX tiles make bf16 convolutions much faster than fp32; without them (AVX512-BF16 or
    # less) bf16 autocast on CPU is roughly break-even or slower, so `auto` keeps fp32.
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx and amx())


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device`` (None = full fp32).

    - ``auto``: on CUDA bf16 where supported, else fp16; on CPU bf16 only with AMX, else off.
    - ``bf16``: CPU or CUDA (autocast on CPU supports bf16 everywhere, fast with AMX).
    - ``fp16``: CUDA only (trained with a GradScaler).
    """
    if mode not in AMP_MODES:
        raise ConfigError(f"unknown --amp {mode!r}; choose one of {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if _cpu_has_fast_bf16() else None
    if mode == "fp16":
        if device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA GPU; on CPU use --amp bf16 or --amp off")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--amp bf16: this GPU does not support bfloat16; use --amp fp16")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a null context for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def git_describe() -> str | None:
    """``git describe --always --dirty`` of the fcnseg source tree, or None (not a checkout, no git)."""
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=src, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment_info(device: torch.device) -> dict:
    """Code and runtime versions for the run's config.json."""
    from fcnseg import __version__

    info = {
        "fcnseg_version": __version__,
        "git": git_describe(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cuda_version": torch.version.cuda,
    }
    return info
