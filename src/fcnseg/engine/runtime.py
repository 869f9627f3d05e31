"""Device, mixed precision, and the code/runtime versions recorded with every run."""
from __future__ import annotations

import contextlib
import platform

import torch

from fcnseg.errors import ConfigError
from fcnseg.version import __version__, git_describe

AMP_MODES = ("auto", "off", "bf16", "fp16")


def resolve_device(name: str | None = "auto", local_rank: int | None = None) -> torch.device:
    """The torch device for a ``--device`` value (one contract for train, eval, predict, bench, API).

    ``auto``: CUDA when available, else CPU. ``cuda``: GPU ``local_rank`` when given (under
    torchrun each process takes its own GPU), else the current GPU. ``cuda:N``, ``cpu`` and
    any other device string torch knows are taken as they are; None means ``cpu``.
    ConfigError for CUDA without a GPU and for strings torch does not know.
    """
    name = name or "cpu"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu (or auto)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a valid torch device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and device.index is None and local_rank is not None:
        return torch.device("cuda", local_rank)
    return device


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


def environment_info(device: torch.device) -> dict:
    """Code and runtime versions for the run's config.json."""
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
