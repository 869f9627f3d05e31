"""Label maps and class names: the conventions shared by the readers, the metrics and the pictures.

A label map is ``uint8 (H, W)`` of class indices ``0 .. num_classes - 1``, with
:data:`~fcnseg.constants.IGNORE_INDEX` (255) for pixels that count for nothing. numpy only.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from fcnseg.constants import IGNORE_INDEX
from fcnseg.errors import DataError


def class_names_or_default(names: Sequence[str] | None, num_classes: int) -> list[str]:
    """``names`` cut or padded to ``num_classes``; missing names are ``class_<i>``."""
    names = list(names or [])
    return names[:num_classes] + [f"class_{i}" for i in range(len(names), num_classes)]


def as_label_map(labels: np.ndarray, what: str = "labels") -> np.ndarray:
    """Any integer ``(H, W)`` array of values 0..255 -> ``uint8 (H, W)``; ValueError otherwise."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{what} must be (H, W), got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"{what} must be class indices in 0..255, got "
                             f"[{labels.min()}, {labels.max()}]")
        labels = labels.astype(np.uint8)
    return labels


def check_label_range(mask: np.ndarray, num_classes: int, path: str | os.PathLike) -> None:
    """Raise DataError if ``mask`` (uint8) holds labels outside ``[0, num_classes)`` and 255."""
    counts = np.bincount(mask.ravel(), minlength=256)  # one pass, (256,)
    bad = np.flatnonzero(counts[num_classes:IGNORE_INDEX]) + num_classes
    if bad.size:
        n_bad = int(counts[bad].sum())
        shown = ", ".join(str(int(v)) for v in bad[:20]) + (", ..." if bad.size > 20 else "")
        raise DataError(
            f"mask {path} has labels outside [0, {num_classes}) and {IGNORE_INDEX} (ignore): "
            f"values [{shown}] in {n_bad} pixels; check num_classes / class_names.txt, or "
            f"relabel these pixels (255 marks pixels to ignore)")
