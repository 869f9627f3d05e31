"""What the mask value 255 means: "ignore" (PASCAL VOC's void) or a class (binary 0/255 masks).

VOC masks use 255 for pixels to ignore beside real classes 1..N-1, and that stays the
default. Foreground/background masks exported by annotation tools use 0/255 instead, and
read with the VOC convention they become one class (background) plus ignored foreground:
a model that trains to loss 0 and val mIoU 100% while learning nothing. So a dataset whose
masks hold *only* 0 and 255 is refused unless the user says what 255 means:

- ``mask_255="class"`` (``--mask-255 class``): 255 is the last class, index ``N - 1``;
  0/255 masks become 2 classes, background (0) and foreground (1).
- ``mask_255="ignore"`` (``--mask-255 ignore``): 255 is ignored (the VOC meaning).

Torch-free (as :mod:`fcnseg.data.image_files`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from fcnseg.constants import IGNORE_INDEX
from fcnseg.errors import ConfigError, DataError

MODES = ("class", "ignore")
BINARY_CLASS_NAMES = ["background", "foreground"]


def check_mode(mask_255: str | None) -> str | None:
    """``mask_255`` if it is None, "class" or "ignore"; else a ConfigError."""
    if mask_255 is not None and mask_255 not in MODES:
        raise ConfigError(f"--mask-255 {mask_255!r}: choose 'class' (255 is a class, e.g. the foreground of "
                          f"0/255 masks) or 'ignore' (255 = pixels to ignore, the VOC convention)")
    return mask_255


def labels_present(read: Callable[[Path], np.ndarray], paths: Iterable[Path],
                   stop_at_other: bool = False) -> tuple[np.ndarray, int]:
    """``(present (256,) bool, masks read)``: which values occur in the masks at ``paths``.

    With ``stop_at_other``, stops at the first mask holding a value other than 0 and 255
    (enough to know the masks are not binary 0/255; real VOC masks stop at the first one).
    """
    present = np.zeros(256, dtype=bool)
    n = 0
    for path in paths:
        present |= np.bincount(read(path).ravel(), minlength=256) > 0  # (256,)
        n += 1
        if stop_at_other and present[1:255].any():
            break
    return present, n


def is_binary_0_255(present: np.ndarray) -> bool:
    """Only the values 0 and 255 occur, and 255 does."""
    return bool(present[255] and not present[1:255].any())


def binary_error(where: str | os.PathLike, files: Sequence[Path], n_read: int) -> DataError:
    """The refusal for 0/255 masks, naming the files and both fixes."""
    shown = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
    return DataError(
        f"the masks in {where} hold only the values 0 and 255 ({n_read} masks read, e.g. {shown}): with 255 "
        f"= ignore (the VOC convention) that is a single class and nothing to learn. If 255 marks the "
        f"foreground, pass --mask-255 class (2 classes: background 0, foreground 1; Python: "
        f"open_dataset(..., mask_255='class')); if 255 really means ignore (and class_names.txt lists the "
        f"other classes), pass --mask-255 ignore")


def apply(mask: np.ndarray, mask_255: str | None, num_classes: int) -> np.ndarray:
    """``mask`` (uint8 (H, W)) with 255 mapped to class ``num_classes - 1`` when ``mask_255 == "class"``."""
    if mask_255 != "class":
        return mask
    out = mask.copy()
    out[mask == IGNORE_INDEX] = num_classes - 1
    return out


def labels_to_check(mask_255: str | None, num_classes: int) -> int:
    """The class count to validate raw labels against: with 255 as the last class, raw labels
    must lie in ``[0, num_classes - 1)`` (255 itself is accepted by the readers)."""
    if mask_255 == "class":
        if num_classes < 2:
            raise ConfigError(f"--mask-255 class makes 255 the last class, so at least 2 classes are "
                              f"needed (got {num_classes}); check class_names.txt")
        return num_classes - 1
    return num_classes
