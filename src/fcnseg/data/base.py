"""The dataset base class and the helpers every on-disk layout shares.

Every dataset yields ``(image float32 (3, H, W), mask int64 (H, W))`` after its paired
transforms (default: ImageNet normalisation only), with 255 = ignore in the mask, and
exposes ``num_classes``, ``class_names``, ``palette`` (``(r, g, b)`` per index, 256
entries), ``ids``, ``image_path(i)`` and ``mask_path(i)``. The layouts are
:mod:`fcnseg.data.voc` and :mod:`fcnseg.data.folder_pairs`; :func:`fcnseg.data.datasets.open_dataset`
picks one from what is on disk.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.constants import IMAGE_SUFFIXES
from fcnseg.data import image_files
from fcnseg.data.transforms import ToTensorNormalize
from fcnseg.errors import DataError

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
        """Item ``i``'s mask, uint8 (H, W), labels validated against ``num_classes``."""
        path = self.mask_path(i)
        if path.suffix.lower() == ".mat":
            return image_files.read_sbd_mask(path, self.num_classes)
        return image_files.read_mask(path, self.num_classes, not_found_hint=image_files.DATASET_HINT)

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
