"""Data: image/mask reading, datasets, paired transforms, a synthetic dataset, VOC download.

Submodules: ``io`` (read_image, read_mask, write_palette_png, default_palette),
``datasets`` (open_dataset, VOCSegmentation, FolderPairs), ``transforms`` (paired
transforms, train_transforms, eval_transforms, pad_collate), ``synthetic``
(make_synthetic_voc), ``download``, ``mask_255`` (what mask value 255 means), ``splits``
(``--val-fraction`` hold-out) and ``convert_masks`` (``fcnseg convert-masks``). The names below are re-exported lazily so that
``import fcnseg.data.io`` stays light (no torch import).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "read_image": "io", "read_mask": "io", "write_palette_png": "io", "default_palette": "io",
    "open_dataset": "datasets", "SegmentationDataset": "datasets", "VOCSegmentation": "datasets",
    "FolderPairs": "datasets", "train_transforms": "transforms", "eval_transforms": "transforms",
    "pad_collate": "transforms", "make_synthetic_voc": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"fcnseg.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fcnseg.data' has no attribute {name!r}")
