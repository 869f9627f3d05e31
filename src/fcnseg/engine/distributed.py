"""Data-parallel training and evaluation from the ``torchrun`` environment.

``torchrun --nproc_per_node N -m fcnseg.cli train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (and the rendezvous address); :func:`init_distributed` reads them and
starts a process group: ``nccl`` when training on CUDA, ``gloo`` on CPU. Without those
variables everything runs in one process and the helpers below are no-ops.

One :func:`is_main_process` (rank 0) gates printing (:func:`log_main`) and saving
(:func:`run_on_main` for work whose errors every rank must see).

Evaluation is sharded with :class:`ShardSampler`: each rank gets a contiguous, disjoint
slice of the split, with no padding and no duplicates, so the all-reduced confusion
matrix counts every image exactly once and equals a single-process evaluation.
(``DistributedSampler`` would pad the last shard with repeated images and bias the scores.)
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from fcnseg import errors
from fcnseg.errors import ConfigError, FcnsegError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None when not distributed

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun") from None


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> DistInfo:
    """Start the process group when launched by torchrun; return this process's :class:`DistInfo`.

    ``device_type`` is ``"cuda"`` or ``"cpu"``: it picks ``nccl`` or ``gloo``. On CUDA the
    process is bound to GPU ``LOCAL_RANK``. Calling it again returns the existing group.
    """
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with "
                          f"`torchrun --nproc_per_node N -m fcnseg.cli ...`")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=dist.get_backend())


def cleanup() -> None:
    """Destroy the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in single-process runs): the one process that prints and saves."""
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum`` or ``max``); a no-op in single-process runs."""
    if is_dist():
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def broadcast_buffers_(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank, in place; a no-op in single-process runs.

    DDP does this at the start of each training forward only: after a step, each rank's
    statistics include its own batch. Evaluation must use the ones rank 0 saves.
    """
    if is_dist():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (pickled through the process group)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous slice of ``n`` items.

    The first ``n % world_size`` ranks get one extra item; slices are disjoint and cover
    ``range(n)`` exactly (a rank may get an empty slice when ``n < world_size``).
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ShardSampler(Sampler[int]):
    """Sequential, disjoint, unpadded shard of a dataset for evaluation under DDP."""

    def __init__(self, n: int, rank: int | None = None, world_size: int | None = None):
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        self.start, self.stop = shard_bounds(n, self.rank, self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in single-process runs)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def log_main(msg: str) -> None:
    """Print ``msg`` on the main process only."""
    if is_main_process():
        print(msg, flush=True)


def run_on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; every rank raises rank 0's FcnsegError (so none hangs in a collective).

    Returns ``fn``'s result on rank 0 and None elsewhere.
    """
    result, err = None, None
    if is_main_process():
        try:
            result = fn()
        except FcnsegError as e:
            err = (type(e).__name__, str(e))
    err = broadcast_object(err)
    if err is not None:
        raise getattr(errors, err[0], ConfigError)(err[1])
    return result
