"""How many DataLoader worker processes to use when the user does not say: one rule for
``train``, ``eval`` and ``bench``.

The machine's usable CPUs (``os.sched_getaffinity``: what this process may run on, which
under a container or ``taskset`` can be fewer than ``os.cpu_count()``), minus one left to
the main process, which runs the model, capped at :data:`MAX_DEFAULT_WORKERS`. On a 2-core
machine that is 1 worker, on 1 core 0 (load in the main process). PyTorch warns ("This
DataLoader will create N worker processes in total. Our suggested max number of worker in
current system is M") whenever N > M; this default never exceeds M.
"""
from __future__ import annotations

import os

# Beyond this, decoding JPEGs stops being the bottleneck of an FCN and workers only cost
# memory (each holds a copy of the dataset object and its prefetched batches).
MAX_DEFAULT_WORKERS = 8


def usable_cpus() -> int:
    """CPUs this process may run on (affinity mask where the OS has one, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """DataLoader workers by default: usable CPUs - 1 (the main process), at most 8."""
    return min(MAX_DEFAULT_WORKERS, usable_cpus() - 1)


def resolve_workers(workers: int | None) -> int:
    """``workers`` as given, or :func:`default_workers` for None."""
    return default_workers() if workers is None else int(workers)


__all__ = ["MAX_DEFAULT_WORKERS", "usable_cpus", "default_workers", "resolve_workers"]
