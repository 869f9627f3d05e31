"""Resumable, reproducible sampling for training.

Exact resume needs two things from the data pipeline:

1. The order of samples in an epoch depends only on ``(seed, epoch)``, and an epoch can
   start part-way (after the batches a checkpoint already trained on).
   :class:`ResumableSampler` wraps ``DistributedSampler`` (shuffled with ``seed + epoch``,
   sharded across DDP ranks) and skips the first ``start`` samples of the shard.
2. The random augmentation of a sample depends only on its position in the epoch, not on
   which worker loads it or on what that worker loaded before. The sampler yields
   ``(index, sample_seed)`` pairs and :class:`SeededDataset` reseeds ``random``, NumPy and
   torch (CPU) around each ``__getitem__``, restoring the previous states afterwards so
   the main process's RNG streams (dropout, ...) are untouched when ``workers=0``.
"""
from __future__ import annotations

import contextlib
import random
import signal
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Per-epoch shuffled shard of ``range(n)`` that yields ``(index, sample_seed)``.

    Call :meth:`set_epoch` before each epoch (``start`` = samples of the shard already
    consumed in this epoch, for a resumed run).
    """

    def __init__(self, n: int, *, seed: int, rank: int = 0, world_size: int = 1):
        # DistributedSampler only needs len(); it pads the shards to equal length by
        # repeating samples (fine for training, where every rank must do the same steps).
        self._inner = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                         seed=seed, drop_last=False)
        self.seed, self.rank = seed, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self._inner.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    @property
    def shard_len(self) -> int:
        """Samples per rank per epoch (before skipping)."""
        return len(self._inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(self._inner)
        # One seed per position of the shard: a function of (seed, epoch, rank, position) only.
        seeds = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(len(order))
        return iter([(order[i], int(seeds[i])) for i in range(self.start, len(order))])

    def __len__(self) -> int:
        return len(self._inner) - self.start


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed ``random``, NumPy and the torch CPU generator; restore their states on exit."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    # Only the CPU generator: torch.manual_seed would also reseed (and so perturb) CUDA's.
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededDataset(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` applies its random transforms with ``seed``."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with isolated_rng(seed):
            return self.base[index]


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT and SIGTERM.

    Ctrl-C, and a scheduler's or ``kill -- -PGID``'s SIGTERM, reach the whole process group;
    the main process handles them (finishes the step, saves ``last.pt``). A worker that died
    on the signal would make the loader raise in the main process, even in the middle of
    that save. Workers still exit with the main process (the loader shuts them down; if the
    main process dies, they notice within seconds). Augmentation randomness comes from
    :class:`SeededDataset`, not from worker seeds.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
