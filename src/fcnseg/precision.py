"""Which numeric precision runs fastest on this CPU, decided by measurement (``--precision auto``).

The same bf16 code is 3.5x faster than fp32 on a CPU with AMX tiles, ~1.4x faster for
training on an AVX512-BF16 CPU without AMX (measured on an AMD EPYC), and 0.5x on an Intel
CPU without AMX: no cpuinfo flag predicts the outcome. So ``auto``:

1. narrows the candidates by the CPU's flags (:func:`cpu_flags`): bf16 is a candidate only
   where the CPU has native bf16 instructions (``avx512_bf16`` or ``amx_bf16``);
2. confirms with a short probe (:func:`probe_times`, ~0.5 s): the same small conv stack in
   fp32 and bf16, alternated, the minimum of ``repeats`` runs each (robust to a busy
   machine: noise only ever adds time);
3. switches away from fp32 only if the candidate is at least ``MARGIN`` (1.15x) faster, so
   a tie or a noisy probe keeps the exact fp32 path.

The decision is cached per process and workload (``"inference"``: the CPU fast path's
prepacked convs; ``"training"``: conv forward + backward under autocast), and can be
forced for reproducibility with the environment variable ``FCNSEG_PRECISION=fp32|bf16``
(the reason then says so). int8 is never chosen by ``auto`` for a PyTorch model: it needs
a quantised model (``fcnseg export --int8``), which is int8 by construction.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from fcnseg.constants import PRECISIONS
from fcnseg.errors import ConfigError
from fcnseg.models.fastpath import fastpath_unavailable, optimize_for_cpu_inference

TORCH_PRECISIONS = ("fp32", "bf16")  # what a PyTorch model runs in (int8: an exported model)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MARGIN = 1.15  # the candidate must be this much faster than fp32 (probe noise stays below it)
ENV_OVERRIDE = "FCNSEG_PRECISION"
WORKLOADS = ("inference", "training")
# CPU flags that make bf16 a candidate: native bf16 dot products (AVX512-BF16) or AMX tiles.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Flags worth recording next to a benchmark (what narrows the candidates, and int8's VNNI).
REPORTED_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


@dataclass(frozen=True)
class Choice:
    """What ``auto`` chose, and why (printed by ``fcnseg predict``, recorded by ``fcnseg bench``)."""

    precision: str                 # "fp32" or "bf16"
    reason: str                    # one line, e.g. "bf16 1.42x faster than fp32 in the probe"
    speedup: float | None = None   # fp32 time / bf16 time in the probe (None: not probed)
    workload: str = "inference"

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (first ``flags`` line of ``/proc/cpuinfo``); empty where unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def reported_flags(flags: frozenset[str] | None = None) -> list[str]:
    """The flags among :data:`REPORTED_FLAGS` this CPU has (for benchmark records)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in REPORTED_FLAGS if f in flags]


def decide(flags: frozenset[str], probe: Callable[[], dict[str, float]], *, margin: float = MARGIN,
           workload: str = "inference", override: str | None = None) -> Choice:
    """The precision ``auto`` runs, from the CPU ``flags`` and (only if bf16 is a candidate) ``probe()``.

    ``probe()`` returns seconds per run ``{"fp32": t, "bf16": t}``. ``override`` (the value of
    ``FCNSEG_PRECISION``) wins when set. Pure logic: the tests inject flags and probe results.
    """
    if override:
        if override not in TORCH_PRECISIONS:
            raise ConfigError(f"{ENV_OVERRIDE}={override!r}: use one of {', '.join(TORCH_PRECISIONS)} "
                              f"(or unset it to let the probe decide)")
        return Choice(override, f"{override}: forced by {ENV_OVERRIDE}={override}", None, workload)
    have = [f for f in BF16_FLAGS if f in flags]
    if not have:
        return Choice("fp32", "fp32: the CPU has no native bf16 (no amx_bf16/avx512_bf16 flag), "
                              "so bf16 was not probed", None, workload)
    times = probe()
    speedup = times["fp32"] / times["bf16"]
    at = f" at {times['size'][0]}x{times['size'][1]}" if times.get("size") else ""
    at += f", batch {times['batch']}" if times.get("batch") else ""
    if speedup >= margin:
        return Choice("bf16", f"bf16: {speedup:.2f}x faster than fp32 in the {workload} probe{at} "
                              f"({'+'.join(have)})", speedup, workload)
    return Choice("fp32", f"fp32: bf16 only {speedup:.2f}x fp32 in the {workload} probe{at} "
                          f"(needs >= {margin:.2f}x; {'+'.join(have)})", speedup, workload)


_CACHE: dict[tuple, Choice] = {}


def auto_precision(workload: str = "inference", model: nn.Module | None = None,
                   size: tuple[int, int] | None = None, batch: int | None = None) -> Choice:
    """:func:`decide` for this CPU, measured once per process, workload, architecture and size (then cached).

    With ``model``, the probe runs that model itself (its fast path, or its training step): the
    answer is for the network that will run, not a stand-in. Without, a small conv stack shaped
    like FCN's middle layers. ``size`` (h, w) and ``batch``: probe at exactly this input (training
    passes its crop and batch: the step it will repeat thousands of times); size None: start small
    and grow the input until compute dominates (:func:`probe_scaled`). Both matter: EfficientNet-
    Lite0's training step gains 0.74x from bf16 at 96x128 x 2, 0.87x at 288x384 x 2 and 1.35x at
    288x384 x 8 (AMD EPYC with avx512_bf16, 2026-12-03).
    """
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    override = os.environ.get(ENV_OVERRIDE) or None
    size = None if size is None else (int(size[0]), int(size[1]))
    key = (workload, _architecture_key(model), size, batch)
    if override is None and key in _CACHE:
        return _CACHE[key]

    def probe() -> dict:
        if size is None:
            return probe_scaled(workload, model=model)
        return {**probe_times(workload, model=model, size=size, batch=batch), "size": size, "batch": batch}

    choice = decide(cpu_flags(), probe, workload=workload, override=override)
    if override is None:
        _CACHE[key] = choice
    return choice


def _architecture_key(model: nn.Module | None) -> tuple | None:
    """Models with the same parameter names and shapes run at the same speed: one probe serves all."""
    if model is None:
        return None
    return (type(model).__name__, *((n, tuple(p.shape)) for n, p in model.named_parameters()))


def resolve_precision(precision: str, device: torch.device | str = "cpu", workload: str = "inference",
                      model: nn.Module | None = None) -> tuple[str, Choice | None]:
    """A PyTorch model's precision for ``--precision`` on ``device``: (``fp32``|``bf16``, auto's Choice or None).

    ``auto`` on a GPU is fp32 (no probe). ``int8`` is a ConfigError here: it needs a
    quantised (exported) model, and the message says how to make one.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        raise ConfigError("--precision int8 runs a quantised model: create one with `fcnseg export "
                          "--checkpoint CKPT --int8 --calib-data DATA --out model-int8.onnx` and run that file")
    if precision != "auto":
        return precision, None
    if torch.device(device).type != "cpu":
        return "fp32", None
    choice = auto_precision(workload, model)
    return choice.precision, choice


class _ProbeNet(nn.Sequential):
    """A small conv stack shaped like FCN's middle layers (3x3 convs, 64-128 channels, ReLU)."""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(128, 128, 3, padding=1), nn.ReLU())


# The probe starts small (cheap for big nets) and doubles the side while one fp32 run takes less than
# PROBE_MIN_SECONDS: below that, fixed per-call costs (casting input and output, dispatch, small
# depthwise kernels) dominate and the ratio says little about real images. Measured 2026-12-03 on an
# AMD EPYC with avx512_bf16: EfficientNet-Lite0's fast path at 96x128 gave bf16 0.97x-1.15x fp32,
# at 360x480 1.8x-1.9x (benchmarks/precision_table.py); VGG16 needs no doubling.
PROBE_SIZE, PROBE_MAX_SIDE, PROBE_MIN_SECONDS = (96, 128), 512, 0.03


def probe_scaled(workload: str = "inference", *, model: nn.Module | None = None,
                 size: tuple[int, int] = PROBE_SIZE) -> dict[str, float]:
    """:func:`probe_times` at the smallest doubling of ``size`` where fp32 takes >= PROBE_MIN_SECONDS
    (or whose longer side reaches PROBE_MAX_SIDE); the result records the size used."""
    while True:
        times = probe_times(workload, model=model, size=size)
        if times["fp32"] >= PROBE_MIN_SECONDS or 2 * max(size) > PROBE_MAX_SIDE:
            return {**times, "size": size}
        size = (2 * size[0], 2 * size[1])


def probe_times(workload: str = "inference", *, model: nn.Module | None = None, repeats: int = 5,
                size: tuple[int, int] = PROBE_SIZE, batch: int | None = None) -> dict[str, float]:
    """Seconds per run of the probe in fp32 and bf16 (min of ``repeats``, the two alternated).

    The probe runs ``model`` (untouched: a copy is trained) or, without one, a small conv stack.
    ``inference``: the CPU fast path (:func:`~fcnseg.models.fastpath.optimize_for_cpu_inference`)
    in each dtype, as ``fcnseg predict`` runs it. ``training``: forward + backward, channels-last,
    without and under bf16 autocast, as the trainer runs it. ``batch``: default 1 for inference, 2
    for training. The global RNG state is
    left as it was (dropout draws inside the probe do not shift a run's random streams).
    """
    with torch.random.fork_rng(devices=[]):
        g = torch.Generator().manual_seed(0)
        if model is None:
            net = _ProbeNet().eval()
            with torch.no_grad():
                for p in net.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        else:
            net = model.eval() if workload == "inference" else copy.deepcopy(model)
        if batch is None:
            batch = 1 if workload == "inference" else 2
        x = torch.randn(batch, 3, *size, generator=g)
        if workload == "inference":
            if fastpath_unavailable():  # eager fallback: bf16 eager is never the faster one
                return {"fp32": 1.0, "bf16": float("inf")}
            runs = {name: _inference_run(optimize_for_cpu_inference(net, size, dtype=dt), x)
                    for name, dt in DTYPES.items()}
        else:
            net = net.train().to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
            runs = {name: _training_run(net, x, dt) for name, dt in DTYPES.items()}
        best = {name: float("inf") for name in runs}
        for name, run in runs.items():
            run()  # warm-up: oneDNN builds its kernels on the first call
        for _ in range(repeats):
            for name, run in runs.items():  # alternate, so a burst of load hits both
                t0 = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _inference_run(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(x)
    return run


def _training_run(net: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    def run() -> None:
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = net(x)
        y.float().square().mean().backward()
    return run


__all__ = ["PRECISIONS", "TORCH_PRECISIONS", "MARGIN", "ENV_OVERRIDE", "Choice", "cpu_flags", "reported_flags",
           "decide", "auto_precision", "resolve_precision", "probe_times"]
