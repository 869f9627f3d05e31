"""Measurement primitives for ``fcnseg bench``: timing statistics, matmul peak, machine facts.

Every timed number is the median of several runs after warm-up, with the interquartile
range (IQR) beside it; on CUDA the device is synchronised before each clock read. On CPU
each timing also records the process's CPU time: ``cpu_util`` = CPU seconds / (wall
seconds x threads) near 1 means the threads had the cores to themselves; well below 1
means other processes took them and the wall times are pessimistic.
"""
from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from fcnseg.optional import available
from fcnseg.precision import reported_flags

# CPU flags worth knowing for these kernels (oneDNN/MKL pick their code paths from them).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


@dataclass
class Timing:
    """Seconds per run of ``repeats`` timed runs (after ``warmup`` untimed ones)."""

    times_s: list[float]
    warmup: int
    cpu_util: float | None = None  # CPU s / (wall s x threads); None on CUDA

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def q1_s(self) -> float:
        return _quantile(self.times_s, 0.25)

    @property
    def q3_s(self) -> float:
        return _quantile(self.times_s, 0.75)

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    def to_dict(self) -> dict:
        """Milliseconds, for the JSON report."""
        d = {"median_ms": 1e3 * self.median_s, "q1_ms": 1e3 * self.q1_s, "q3_ms": 1e3 * self.q3_s,
             "iqr_ms": 1e3 * self.iqr_s, "min_ms": 1e3 * self.min_s,
             "runs_ms": [1e3 * t for t in self.times_s], "warmup": self.warmup,
             "repeats": len(self.times_s)}
        if self.cpu_util is not None:
            d["cpu_util"] = self.cpu_util
        return d


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy."""
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for queued device work (CUDA kernels are asynchronous)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_callable(fn: Callable[[], object], *, warmup: int, repeats: int,
                  device: torch.device = torch.device("cpu"), threads: int | None = None) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (wall clock)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    times, cpu = [], 0.0
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        cpu += time.process_time() - c0
    util = None
    if device.type == "cpu":
        util = cpu / (sum(times) * (threads or torch.get_num_threads()))
    return Timing(times, warmup, util)


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (2048, 3072), *,
                warmup: int = 1, repeats: int = 5, threads: int | None = None) -> dict:
    """The machine's dense matmul rate: ``torch.mm`` of n x n matrices, 2 n^3 FLOPs each.

    Returns the size with the highest median rate: ``gflop_per_s`` (median), ``best_gflop_per_s``
    (fastest run), ``n`` and the timing. This is the yardstick the model's GFLOP/s is compared
    with: same threads, same library (MKL/oneDNN or cuBLAS) the convolutions use.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    best: dict | None = None
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        t = time_callable(lambda: torch.mm(a, b), warmup=warmup, repeats=repeats, device=device,
                          threads=threads)
        flops = 2.0 * n ** 3
        rec = {"n": n, "dtype": str(dtype).replace("torch.", ""), "flops": flops,
               "gflop_per_s": flops / t.median_s / 1e9, "best_gflop_per_s": flops / t.min_s / 1e9,
               "timing": t.to_dict()}
        if best is None or rec["gflop_per_s"] > best["gflop_per_s"]:
            best = rec
        del a, b
    assert best is not None  # sizes is non-empty
    return best


def cpu_info() -> dict:
    """CPU model and the relevant feature flags from /proc/cpuinfo (Linux; else platform)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in (platform.processor(), platform.machine()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: model from platform, flags unknown
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS/Windows
        usable = os.cpu_count()
    return {"model": model, "flags": {f: f in flags for f in CPU_FLAGS} if flags else {},
            "logical_cpus": os.cpu_count(), "usable_cpus": usable}


def environment(device: torch.device, threads: int) -> dict:
    """Versions, CPU/GPU names and settings that the numbers depend on."""
    cpu = cpu_info()
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
        "cpu": cpu,
        "cpu_flags": reported_flags(),  # what --precision auto narrows its candidates by
        "device": str(device),
        "device_name": cpu["model"],
        "loadavg_1m": loadavg(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), gpu_memory_gb=props.total_memory / 2**30,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    env["onnxruntime"] = None
    if available("onnxruntime"):
        import onnxruntime  # optional dependency (checked just above): only its version is recorded here

        env["onnxruntime"] = onnxruntime.__version__
    return env


def loadavg() -> float | None:
    """The 1-minute load average (other processes competing for the cores), or None if unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this OS
        return None


def peak_rss_mb() -> dict:
    """Peak resident memory so far: this process, and its finished/waited children (loader workers)."""
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024
    return {"self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale}


def reset_phase_peak() -> bool:
    """Start a new peak-RSS phase: reset this process's high-water mark (``VmHWM``) by writing 5
    to ``/proc/self/clear_refs`` (Linux >= 4.0). False where that is not possible: the phase
    peak is then the process-wide maximum so far (``phase_reset`` records which)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def phase_peak_rss_mb() -> float:
    """This process's peak RSS since :func:`reset_phase_peak` (``VmHWM``), else since it started."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return peak_rss_mb()["self_mb"]


def fit_linear(xs: list[float], ys: list[float]) -> dict:
    """Least-squares ``y = slope * x + intercept`` and R^2 (1 = perfectly linear)."""
    n = len(xs)
    if n < 2:
        raise ValueError("need at least two points to fit a line")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("all x values are equal")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"slope": slope, "intercept": intercept, "r2": r2}


__all__ = ["Timing", "time_callable", "matmul_peak", "cpu_info", "environment", "peak_rss_mb",
           "fit_linear", "synchronizer", "loadavg"]
