"""A held-out validation split (``fcnseg train --val-fraction F``) for data without one.

A plain ``images/`` + ``masks/`` folder has no train/val split. ``--val-fraction F`` takes
the training pool (the train split if the dataset has one, else every pair), shuffles its
sorted ids with a generator seeded by ``--seed``, holds out ``round(F * n)`` of them (at
least 1) for validation, and writes both lists as split files into the run directory
(``train.txt``, ``val.txt``: one id per line, the format of a VOC / folder split file).
The user can read them and reuse them (``--train-split run/train.txt``, ``fcnseg eval
--split run/val.txt``); ``--resume`` reads them back instead of drawing again, so a
resumed run validates on the same images even if files were added to the folder since.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fcnseg.data.datasets import open_dataset
from fcnseg.data.folder_pairs import FolderPairs
from fcnseg.data.voc import resolve_voc_root
from fcnseg.errors import ConfigError, DataError
from fcnseg.outputs import atomic_write_text

SPLIT_FILES = ("train.txt", "val.txt")


def holdout(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train_ids, val_ids)``, each sorted: a seeded shuffle of ``sorted(ids)``, the first
    ``max(1, round(fraction * n))`` held out. The same ids, fraction and seed give the same split."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1 (e.g. 0.1), got {fraction}")
    pool = sorted(set(ids))
    n = len(pool)
    n_val = max(1, int(math.floor(fraction * n + 0.5)))
    if n_val >= n:
        raise DataError(f"--val-fraction {fraction}: {n} image(s) cannot be split into a non-empty train "
                        f"and val set; add images or lower the fraction")
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(pool[i] for i in order[:n_val])
    held = set(val)
    return [i for i in pool if i not in held], val


def prepare_holdout_files(data: str | os.PathLike, train_split: str, fraction: float, seed: int,
                          out: str | os.PathLike, *, resume: bool) -> tuple[Path, Path, str, bool]:
    """Write (or, with ``resume``, reuse) ``out/train.txt`` and ``out/val.txt``.

    Returns ``(train_file, val_file, what was done (for the log), whether the files were written)``.
    """
    out = Path(out)
    train_file, val_file = (out / name for name in SPLIT_FILES)
    if resume and train_file.is_file() and val_file.is_file():
        return train_file, val_file, f"validation split reused from {train_file} and {val_file}", False
    root = Path(data)
    # The pool: the train split where the dataset has one, else (a flat folder) every pair.
    if resolve_voc_root(root) is None and not FolderPairs.has_split(root, train_split):
        split, source = None, f"all pairs of {root}"
    else:
        split, source = train_split, f"split {train_split!r} of {root}"
    ids = open_dataset(root, split, mask_255="ignore").ids  # ids only: what 255 means is checked later
    train_ids, val_ids = holdout(ids, fraction, seed)
    atomic_write_text(train_file, "".join(f"{i}\n" for i in train_ids))
    atomic_write_text(val_file, "".join(f"{i}\n" for i in val_ids))
    return train_file, val_file, (f"validation split: {len(val_ids)} of {len(ids)} images of {source} held out "
                                  f"(--val-fraction {fraction:g}, seed {seed}); written to {train_file} and "
                                  f"{val_file}"), True
