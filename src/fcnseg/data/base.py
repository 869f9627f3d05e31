"""The dataset base class and the helpers every on-disk layout shares.

Every dataset yields ``(image float32 (3, H, W), mask int64 (H, W))`` after its paired
transforms (default: ImageNet normalisation only), with 255 = ignore in the mask, and
exposes ``num_classes``, ``class_names``, ``palette`` (``(r, g, b)`` per index, 256
entries), ``ids``, ``image_path(i)`` and ``mask_path(i)``. The layouts are
:mod:`fcnseg.data.voc` and :mod:`fcnseg.data.folder_pairs`; :func:`fcnseg.data.datasets.open_dataset`
picks one from what is on disk.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.constants import IGNORE_INDEX, IMAGE_SUFFIXES, MASK_SUFFIXES
from fcnseg.data import image_files
from fcnseg.data import mask_255 as m255
from fcnseg.data.transforms import ToTensorNormalize
from fcnseg.errors import DataError
from fcnseg.labels import class_names_or_default

Transform = Callable[[np.ndarray, np.ndarray], tuple]


class SegmentationDataset(Dataset):
    """Base: a list of (id, image path, mask path) plus class metadata.

    Subclasses fill ``ids``, ``_images``, ``_masks``, ``num_classes``, ``class_names`` and
    ``palette``. Masks ending in ``.mat`` are SBD masks; all others are PNG-like.
    """

    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    ids: list[str]
    mask_255: str | None = None  # None/"ignore": 255 = ignore; "class": 255 is class num_classes - 1

    def __init__(self, transforms: Transform | None = None):
        self.transforms = transforms
        self._default_transform = ToTensorNormalize()
        self.ids = []
        self._images: list[Path] = []
        self._masks: list[Path] = []

    def __len__(self) -> int:
        return len(self.ids)

    def _index(self, i: int) -> int:
        n = len(self.ids)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} items")
        return j

    def image_path(self, i: int) -> Path:
        """Path of item ``i``'s image."""
        return self._images[self._index(i)]

    def mask_path(self, i: int) -> Path:
        """Path of item ``i``'s mask (``.png``, or ``.mat`` for SBD items)."""
        return self._masks[self._index(i)]

    def read_mask(self, i: int) -> np.ndarray:
        """Item ``i``'s mask, uint8 (H, W), labels validated against ``num_classes``
        (with ``mask_255="class"``, 255 read as class ``num_classes - 1``)."""
        path = self.mask_path(i)
        n = m255.labels_to_check(self.mask_255, self.num_classes)
        if path.suffix.lower() == ".mat":
            mask = image_files.read_sbd_mask(path, n)
        else:
            mask = image_files.read_mask(path, n, not_found_hint=image_files.DATASET_HINT)
        return m255.apply(mask, self.mask_255, self.num_classes)

    def _refuse_binary_0_255(self, where: Path) -> None:
        """Refuse masks holding only 0 and 255 unless ``mask_255`` says what 255 means.

        Reads this split's masks until one holds another value: one mask for real VOC-style data.
        """
        if self.mask_255 is not None:
            return
        present, n = m255.labels_present(read_raw_mask, self._masks, stop_at_other=True)
        if m255.is_binary_0_255(present):
            raise m255.binary_error(where, self._masks, n)

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw item ``i``: image uint8 (H, W, 3) and mask uint8 (H, W), sizes checked."""
        image = image_files.read_image(self.image_path(i), not_found_hint=image_files.DATASET_HINT)
        mask = self.read_mask(i)
        if image.shape[:2] != mask.shape:
            ih, iw = image.shape[:2]
            mh, mw = mask.shape
            raise DataError(f"size mismatch: image {self.image_path(i)} is {iw}x{ih} (WxH) but its "
                            f"mask {self.mask_path(i)} is {mw}x{mh}; masks must have their "
                            f"image's exact size")
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_pair(i)
        t = self.transforms if self.transforms is not None else self._default_transform
        return t(image, mask)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} items, num_classes={self.num_classes}, "
                f"root={getattr(self, 'root', None)})")


def read_class_names(path: Path) -> list[str]:
    """``class_names.txt``: one name per line (blank lines skipped). Must be 1..255 unique names."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class names file {path}: {e}; it must be UTF-8 text, "
                        f"one class name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"class names file {path} is empty; write one class name per line "
                        f"(line i = label i)")
    if len(names) > 255:
        raise DataError(f"class names file {path} lists {len(names)} classes; at most 255 fit "
                        f"uint8 masks with 255 = ignore")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise DataError(f"class names file {path} repeats {dups}; each line must name a different class")
    return names


def palette_for(mask_path: Path) -> list[tuple[int, int, int]]:
    """256 colours: the first mask's own palette (data-derived) padded with VOC colours."""
    own = image_files.read_palette(mask_path) if mask_path.suffix.lower() != ".mat" else None
    pal = list(own or [])[:256]
    return pal + image_files.default_palette(256)[len(pal):]


def listing(folder: Path, limit: int = 15) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "(unreadable)"
    if not names:
        return "(empty)"
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def read_split(path: Path) -> list[str]:
    """Ids from a split file: one per line; the first whitespace-separated token counts."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from None
    ids = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise DataError(f"split file {path} lists no ids; write one image id per line")
    return list(dict.fromkeys(ids))  # drop duplicates, keep order


def find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:  # .jpg first
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def split_file_arg(split: str | None) -> Path | None:
    """``split`` as a split-file path (it ends in ``.txt`` or holds a path separator), else None."""
    if split is None or not (split.endswith(".txt") or "/" in split or os.sep in split):
        return None
    return Path(split)


def read_raw_mask(path: Path) -> np.ndarray:
    """A mask's stored values, uint8 (H, W) (no label check, 255 as stored)."""
    if path.suffix.lower() == ".mat":
        return image_files.read_sbd_mask(path)
    return image_files.read_mask(path)


# (masks folder, signature of its files) -> (labels present, mask files): scan once per process.
_SCAN_CACHE: dict[tuple[str, tuple], tuple[np.ndarray, list[Path]]] = {}


def scan_labels(masks_root: Path) -> tuple[np.ndarray, list[Path]]:
    """``(present (256,) bool, files)``: the values occurring in every mask under ``masks_root``.

    Decodes every mask once; cached per process (keyed on the files' paths, sizes and mtimes).
    """
    files = sorted(p for p in masks_root.rglob("*")
                   if p.suffix.lower() in MASK_SUFFIXES and p.is_file() and not p.name.startswith("."))
    sig = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(masks_root.resolve()), sig)
    if key not in _SCAN_CACHE:
        present, _ = m255.labels_present(image_files.read_mask, files)
        _SCAN_CACHE[key] = (present, files)
    return _SCAN_CACHE[key]


def inferred_class_names(present: np.ndarray, mask_255: str | None,
                         masks_root: Path | None = None) -> list[str]:
    """Class names from the labels present (``(256,) bool``): ``class_0 .. class_<largest>``, plus
    the 255 class (last) with ``mask_255="class"``; 0/255 masks give ``background, foreground``."""
    labels = np.flatnonzero(present[:IGNORE_INDEX])  # (k,) labels other than 255
    if mask_255 == "class":
        if m255.is_binary_0_255(present):
            return list(m255.BINARY_CLASS_NAMES)
        n = int(labels[-1]) + 1 if labels.size else 0
        return class_names_or_default(None, n) + ["class_255"]
    if not labels.size:
        raise DataError(f"every mask under {masks_root} is empty or all 255 (ignore); cannot "
                        f"infer the classes: write class_names.txt")
    return class_names_or_default(None, int(labels[-1]) + 1)
