"""Open a segmentation dataset root, whichever layout is on disk: VOC or folder pairs."""
from __future__ import annotations

import os
from pathlib import Path

from fcnseg.data.base import SegmentationDataset, Transform, listing
from fcnseg.data.folder_pairs import FOLDER_LAYOUT, FolderPairs
from fcnseg.data.voc import VOC_LAYOUT, VOCSegmentation, resolve_voc_root
from fcnseg.errors import ConfigError, DataError


def open_dataset(root: str | os.PathLike, split: str | None = "train", transforms: Transform | None = None,
                 mask_255: str | None = None, **kw) -> SegmentationDataset:
    """Open ``root`` as VOC layout (``sbd_root=``, ``sbd_splits=`` accepted) or folder pairs
    (``class_names=`` accepted), whichever is on disk. Keyword arguments that are None are
    ignored, so callers may pass e.g. ``sbd_root=args.sbd`` unconditionally.

    ``split`` may also be a split file (a path ending in ``.txt``: one id per line).
    ``mask_255``: what the mask value 255 means, ``"ignore"`` (VOC) or ``"class"`` (the last
    class: 0/255 masks become background/foreground); None refuses masks holding only 0 and
    255 (see :mod:`fcnseg.data.mask_255`).
    """
    root_ = Path(root)
    if not root_.is_dir():
        raise DataError(f"dataset root {root_} does not exist or is not a folder; accepted layouts: "
                        f"{VOC_LAYOUT}; or {FOLDER_LAYOUT}")
    kw = {k: v for k, v in kw.items() if v is not None}
    if resolve_voc_root(root_) is not None:
        _check_kwargs(kw, {"sbd_root", "sbd_splits"}, "VOC")
        return VOCSegmentation(root_, split="train" if split is None else split,
                               transforms=transforms, mask_255=mask_255, **kw)
    if (root_ / "images").is_dir():
        _check_kwargs(kw, {"class_names"}, "folder-pairs")
        return FolderPairs(root_, split=split, transforms=transforms, mask_255=mask_255, **kw)
    raise DataError(f"{root_} is not a dataset folder; accepted layouts: {VOC_LAYOUT}; or "
                    f"{FOLDER_LAYOUT}; found: {listing(root_)}")


def _check_kwargs(kw: dict, allowed: set[str], layout: str) -> None:
    bad = sorted(set(kw) - allowed)
    if bad:
        raise ConfigError(f"options {bad} do not apply to a {layout} dataset (accepted: {sorted(allowed)})")
