"""Folder pairs layout: ``images/`` + ``masks/`` matched by file stem."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

from fcnseg.constants import IMAGE_SUFFIXES, MASK_SUFFIXES
from fcnseg.data import mask_255 as m255
from fcnseg.data.base import (SegmentationDataset, Transform, inferred_class_names, listing, palette_for,
                              read_class_names, read_split, scan_labels, split_file_arg)
from fcnseg.errors import ConfigError, DataError, DataWarning

FOLDER_LAYOUT = ("folder pairs: images/<name>.jpg|png + masks/<name>.png matched by file stem "
                 "(optionally images/<split>/ + masks/<split>/ or <split>.txt) [, class_names.txt]")
# How a CLI user gets a validation set from a folder without splits (fcnseg train --val-fraction).
NO_SPLIT_HINT = ("with `fcnseg train`, pass --val-fraction 0.1 to hold out 10% of the pairs for validation "
                 "(it writes train.txt/val.txt to the run directory; --split/--train-split/--val-split accept "
                 "such a .txt file); in Python, split=None takes every pair")


class FolderPairs(SegmentationDataset):
    """``images/`` + ``masks/`` folders, matched by file stem (``a.jpg`` <-> ``a.png``).

    Splits: ``split=None`` takes every pair; otherwise ``images/<split>/`` + ``masks/<split>/``
    if they exist, else the stems listed in ``root/<split>.txt``; a ``split`` ending in
    ``.txt`` or holding a path separator is such a file itself (e.g. a run's ``val.txt``).

    Classes: ``class_names`` (argument) or ``root/class_names.txt``; otherwise
    ``num_classes = 1 + the largest label (other than 255) in any mask under masks/``,
    over all splits so train and val agree. That scan decodes every mask once; the
    result is cached per process. Writing ``class_names.txt`` avoids the scan and is
    safer (a class absent from every mask cannot be detected). Masks holding only 0 and
    255 are refused unless ``mask_255`` says what 255 means (:mod:`fcnseg.data.mask_255`).
    A mask without an image is left out with a :class:`~fcnseg.errors.DataWarning`.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None,
                 transforms: Transform | None = None, class_names: Sequence[str] | None = None,
                 mask_255: str | None = None):
        super().__init__(transforms)
        self.mask_255 = m255.check_mode(mask_255)
        root_ = Path(root)
        self.root, self.split = root_, split
        images_root, masks_root = root_ / "images", root_ / "masks"
        missing = [f"{d.name}/" for d in (images_root, masks_root) if not d.is_dir()]
        if missing:
            found = listing(root_) if root_.is_dir() else "nothing (the folder does not exist)"
            raise DataError(f"folder dataset {root_} is missing {', '.join(missing)}; expected "
                            f"{FOLDER_LAYOUT}; found: {found}")

        stems: list[str] | None = None
        split_file = split_file_arg(split) or root_ / f"{split}.txt"
        if split is None:
            img_dir, mask_dir = images_root, masks_root
        elif split_file_arg(split) is None and (images_root / split).is_dir():
            img_dir, mask_dir = images_root / split, masks_root / split
        elif split_file.is_file():
            img_dir, mask_dir = images_root, masks_root
            stems = read_split(split_file)
        elif split_file_arg(split) is not None:
            raise DataError(f"split file {split_file} not found; write one image stem per line")
        else:
            raise DataError(f"folder dataset {root_} has no split {split!r}: expected images/{split}/ + "
                            f"masks/{split}/ or {split_file}; {NO_SPLIT_HINT}")

        images = _files_by_stem(img_dir, IMAGE_SUFFIXES)
        masks = _files_by_stem(mask_dir, MASK_SUFFIXES) if mask_dir.is_dir() else {}
        orphans = sorted(masks[s].name for s in masks if s not in images)
        if orphans:  # the reverse (an image without a mask) is an error below
            warnings.warn(f"{len(orphans)} masks in {mask_dir} have no image in {img_dir} (matched by file "
                          f"stem) and are left out: {', '.join(orphans[:5])}{', ...' if len(orphans) > 5 else ''}",
                          DataWarning, stacklevel=2)
        if stems is not None:
            absent = [s for s in stems if s not in images]
            if absent:
                raise DataError(f"split file {split_file} lists {len(absent)} ids with no "
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
            present, files = scan_labels(masks_root)
            if self.mask_255 is None and m255.is_binary_0_255(present):
                raise m255.binary_error(masks_root, files, len(files))
            self.class_names = inferred_class_names(present, self.mask_255, masks_root)
        self.num_classes = len(self.class_names)
        self.palette = palette_for(self._masks[0])
        if class_names is not None or names_file.is_file():  # declared classes: not scanned above
            self._refuse_binary_0_255(mask_dir)

    @staticmethod
    def has_split(root: str | os.PathLike, split: str) -> bool:
        """Whether ``root`` has split ``split`` (``images/<split>/``, ``<split>.txt``, or a split file)."""
        path = split_file_arg(split)
        if path is not None:
            return path.is_file()
        return (Path(root) / "images" / split).is_dir() or (Path(root) / f"{split}.txt").is_file()


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
