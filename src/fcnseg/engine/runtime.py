"""Device, mixed precision, and the code/runtime versions recorded with every run."""
from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path

import torch

from fcnseg.errors import ConfigError
from fcnseg.precision import auto_precision
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


def amp_name(dtype: torch.dtype | None) -> str:
    """How a run records its autocast dtype: ``bfloat16``, ``float16`` or ``off``."""
    return str(dtype).replace("torch.", "") if dtype is not None else "off"


def amp_from_name(name: str) -> torch.dtype | None:
    """The inverse of :func:`amp_name` (what a resumed run reads back from its checkpoint)."""
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "off": None}
    if name not in dtypes:
        raise ConfigError(f"recorded amp dtype {name!r} is not one of {', '.join(dtypes)}")
    return dtypes[name]


def resolve_amp(mode: str, device: torch.device, recorded: str | None = None,
                model: torch.nn.Module | None = None, size: tuple[int, int] | None = None,
                batch: int | None = None) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device`` (None = full fp32).

    - ``auto``: on CUDA bf16 where supported, else fp16; on CPU bf16 only where a short
      training probe (``model``'s own training step when given) measures it >= 1.15x faster than
      fp32 (:func:`fcnseg.precision.auto_precision`; the CPU flags only nominate bf16), else off.
      ``size``/``batch``: the training crop (h, w) and batch, probed as they are (a smaller probe
      under-states bf16's gain: EfficientNet-Lite0 measured 0.74x at 96x128 x 2, 1.35x at its
      288x384 x 8). ``recorded`` (a resumed run's
      :func:`amp_name`) wins over a new measurement: a run never switches dtype midway.
    - ``bf16``: CPU or CUDA (autocast on CPU supports bf16 everywhere, fast with AMX).
    - ``fp16``: CUDA only (trained with a GradScaler).
    """
    if mode not in AMP_MODES:
        raise ConfigError(f"unknown --amp {mode!r}; choose one of {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if mode == "auto":
        if recorded is not None:
            return amp_from_name(recorded)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type != "cpu":
            return None
        return torch.bfloat16 if auto_precision("training", model, size, batch).precision == "bf16" else None
    if mode == "fp16":
        if device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA GPU; on CPU use --amp bf16 or --amp off")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--amp bf16: this GPU does not support bfloat16; use --amp fp16")
    return torch.bfloat16


def recorded_amp(resume_ckpt: dict | None, run_dir: Path) -> str | None:
    """The amp dtype a resumed run started with (:func:`amp_name`), or None for a new run.

    From ``last.pt``'s ``amp_dtype``; runs saved before it was recorded: their ``config.json``.
    """
    if resume_ckpt is None:
        return None
    if resume_ckpt.get("amp_dtype"):
        return str(resume_ckpt["amp_dtype"])
    try:
        resolved = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))["resolved"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return resolved.get("amp_dtype") or "off" if "amp_dtype" in resolved else None


def amp_choice(mode: str, device: torch.device, resumed: bool, model: torch.nn.Module | None = None,
               size: tuple[int, int] | None = None, batch: int | None = None) -> str:
    """Why the run trains in its dtype (config.json's ``resolved.amp_choice``)."""
    if mode != "auto":
        return f"--amp {mode}"
    if resumed:
        return "--amp auto: the dtype recorded when the run started (kept on resume)"
    if device.type != "cpu":
        return f"--amp auto on {device.type}"
    return f"--amp auto: {auto_precision('training', model, size, batch).reason}"


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
