"""Data: image/mask files, datasets, paired transforms, a synthetic dataset, VOC download.

Submodules: ``image_files`` (read_image, read_mask, write_palette_png, default_palette),
``datasets`` (open_dataset) over the layouts ``voc`` (VOCSegmentation) and ``folder_pairs``
(FolderPairs), both on ``base`` (SegmentationDataset), ``transforms`` (paired transforms,
train_transforms, eval_transforms, pad_collate), ``synthetic`` (make_synthetic_voc),
``download``, ``mask_255`` (what mask value 255 means), ``splits`` (``--val-fraction``
hold-out), ``convert_masks`` (``fcnseg convert-masks``) and ``check`` (``fcnseg check-data``).
The names below are re-exported lazily so that ``import fcnseg.data`` and ``fcnseg.data.image_files``
stay light (no torch import).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "read_image": "image_files", "read_mask": "image_files", "write_palette_png": "image_files",
    "default_palette": "image_files", "open_dataset": "datasets", "SegmentationDataset": "base",
    "VOCSegmentation": "voc", "FolderPairs": "folder_pairs", "train_transforms": "transforms", "eval_transforms": "transforms",
    "pad_collate": "transforms", "make_synthetic_voc": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"fcnseg.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fcnseg.data' has no attribute {name!r}")
