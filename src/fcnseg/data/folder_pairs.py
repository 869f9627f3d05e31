"""Folder pairs layout: ``images/`` + ``masks/`` matched by file stem."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fcnseg.constants import IGNORE_INDEX, IMAGE_SUFFIXES, MASK_SUFFIXES
from fcnseg.data import image_files
from fcnseg.data.base import SegmentationDataset, Transform, listing, palette_for, read_class_names, read_split
from fcnseg.errors import ConfigError, DataError
from fcnseg.labels import class_names_or_default

FOLDER_LAYOUT = ("folder pairs: images/<name>.jpg|png + masks/<name>.png matched by file stem "
                 "(optionally images/<split>/ + masks/<split>/ or <split>.txt) [, class_names.txt]")


# (masks folder, signature of its files) -> num_classes found by scanning: scan once per process.
_SCAN_CACHE: dict[tuple[str, tuple], int] = {}


class FolderPairs(SegmentationDataset):
    """``images/`` + ``masks/`` folders, matched by file stem (``a.jpg`` <-> ``a.png``).

    Splits: ``split=None`` takes every pair; otherwise ``images/<split>/`` + ``masks/<split>/``
    if they exist, else the stems listed in ``root/<split>.txt``.

    Classes: ``class_names`` (argument) or ``root/class_names.txt``; otherwise
    ``num_classes = 1 + the largest label (other than 255) in any mask under masks/``,
    over all splits so train and val agree. That scan decodes every mask once; the
    result is cached per process. Writing ``class_names.txt`` avoids the scan and is
    safer (a class absent from every mask cannot be detected).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None,
                 transforms: Transform | None = None, class_names: Sequence[str] | None = None):
        super().__init__(transforms)
        root_ = Path(root)
        self.root, self.split = root_, split
        images_root, masks_root = root_ / "images", root_ / "masks"
        missing = [f"{d.name}/" for d in (images_root, masks_root) if not d.is_dir()]
        if missing:
            found = listing(root_) if root_.is_dir() else "nothing (the folder does not exist)"
            raise DataError(f"folder dataset {root_} is missing {', '.join(missing)}; expected "
                            f"{FOLDER_LAYOUT}; found: {found}")

        stems: list[str] | None = None
        if split is None:
            img_dir, mask_dir = images_root, masks_root
        elif (images_root / split).is_dir():
            img_dir, mask_dir = images_root / split, masks_root / split
        elif (root_ / f"{split}.txt").is_file():
            img_dir, mask_dir = images_root, masks_root
            stems = read_split(root_ / f"{split}.txt")
        else:
            raise DataError(f"folder dataset {root_} has no split {split!r}: expected images/{split}/ + "
                            f"masks/{split}/ or {root_ / (split + '.txt')}; pass split=None to use "
                            f"every pair")

        images = _files_by_stem(img_dir, IMAGE_SUFFIXES)
        masks = _files_by_stem(mask_dir, MASK_SUFFIXES) if mask_dir.is_dir() else {}
        if stems is not None:
            absent = [s for s in stems if s not in images]
            if absent:
                raise DataError(f"split file {root_ / (split + '.txt')} lists {len(absent)} ids with no "
                                f"image in {img_dir}: {', '.join(absent[:10])}")
            images = {s: images[s] for s in stems}
        if not images:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {img_dir}")
        no_mask = [images[s].name for s in images if s not in masks]
        if no_mask:
            raise DataError(f"{len(no_mask)} images in {img_dir} have no mask in {mask_dir} (matched by "
                            f"file stem): {', '.join(no_mask[:10])}{', ...' if len(no_mask) > 10 else ''}; "
                            f"add <stem>.png masks or remove these images")
        for stem in sorted(images):
            self.ids.append(stem)
            self._images.append(images[stem])
            self._masks.append(masks[stem])

        names_file = root_ / "class_names.txt"
        if class_names is not None:
            self.class_names = [str(n) for n in class_names]
            if not 1 <= len(self.class_names) <= 255:
                raise ConfigError(f"class_names must list 1..255 names, got {len(self.class_names)}")
        elif names_file.is_file():
            self.class_names = read_class_names(names_file)
        else:
            n = _scan_num_classes(masks_root)
            self.class_names = class_names_or_default(None, n)
        self.num_classes = len(self.class_names)
        self.palette = palette_for(self._masks[0])


def _files_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """``{stem: path}`` of the (non-hidden) files in ``folder`` with one of ``suffixes``."""
    if not folder.is_dir():
        raise DataError(f"folder {folder} not found")
    out: dict[str, Path] = {}
    for p in folder.iterdir():
        if p.name.startswith(".") or p.suffix.lower() not in suffixes or not p.is_file():
            continue
        if p.stem in out:
            raise DataError(f"two files in {folder} share the stem {p.stem!r} ({out[p.stem].name}, "
                            f"{p.name}); masks are matched by stem, so keep one")
        out[p.stem] = p
    return out


def _scan_num_classes(masks_root: Path) -> int:
    """1 + the largest non-ignore label over every mask under ``masks_root`` (cached)."""
    files = sorted(p for p in masks_root.rglob("*")
                   if p.suffix.lower() in MASK_SUFFIXES and p.is_file() and not p.name.startswith("."))
    sig = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(masks_root.resolve()), sig)
    if key not in _SCAN_CACHE:
        largest = -1
        for p in files:
            counts = np.bincount(image_files.read_mask(p).ravel(), minlength=256)[:IGNORE_INDEX]
            nz = np.flatnonzero(counts)
            if nz.size:
                largest = max(largest, int(nz[-1]))
        if largest < 0:
            raise DataError(f"every mask under {masks_root} is empty or all 255 (ignore); cannot "
                            f"infer the classes: write class_names.txt")
        _SCAN_CACHE[key] = largest + 1
    return _SCAN_CACHE[key]
