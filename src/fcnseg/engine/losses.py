"""Per-pixel cross entropy with an ignore label, and class-balancing weights."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fcnseg.constants import IGNORE_INDEX
from fcnseg.errors import ConfigError, DataError


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-pixel cross entropy over the labelled pixels (255 = ignore).

    logits (B, C, H, W), any float dtype (computed in float32); target (B, H, W) int64.
    Same as ``F.cross_entropy(..., ignore_index=255)`` with weights, except that a batch
    with no labelled pixel gives 0 (PyTorch's mean would be 0/0 = NaN and look like divergence).
    """
    total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    valid = target != IGNORE_INDEX  # (B, H, W)
    if weight is None:
        denom = valid.sum()
    else:
        # Weighted mean divides by the summed weights of the labelled pixels.
        denom = weight[target.masked_fill(~valid, 0)].masked_fill(~valid, 0).sum()
    # clamp instead of a data-dependent branch: no host sync; 0 / tiny = 0 for empty batches.
    return total / denom.to(total.dtype).clamp_min(1e-12)


def pixel_frequencies(masks: Callable[[int], np.ndarray], n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: its pixel count, and the total pixel count of the images in which it appears.

    ``masks(i)`` returns image ``i``'s (H, W) label map (255 = ignore).
    """
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for i in range(n):
        m = np.asarray(masks(i))
        counts = np.bincount(m[m != IGNORE_INDEX].ravel().astype(np.int64), minlength=num_classes)[:num_classes]
        class_pixels += counts
        image_pixels[counts > 0] += m.size  # all pixels of the images that contain c
    return class_pixels, image_pixels


def median_frequency_weights(class_pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus): ``w_c = median(freq) / freq_c``.

    ``freq_c`` = pixels of class c / pixels of the images where c appears. Classes absent
    from the training set get weight 0 (they have no pixels to weigh anyway) and do not
    enter the median.
    """
    present = class_pixels > 0
    if not present.any():
        raise DataError("no labelled pixels in the training masks; cannot compute class weights")
    freq = np.zeros(len(class_pixels), dtype=np.float64)
    freq[present] = class_pixels[present] / image_pixels[present]
    med = float(np.median(freq[present]))
    weights = np.zeros_like(freq)
    weights[present] = med / freq[present]
    return weights


def load_class_weights(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """Read class weights from a JSON list or a text file of numbers (one per class)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--class-weights {path}: no such file; pass none, median-freq, or a file "
                          f"with {num_classes} numbers")
    text = path.read_text(encoding="utf-8")
    try:
        values: Sequence[float] = json.loads(text) if text.lstrip().startswith("[") else \
            [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"{path}: class weights must be numbers (a JSON list or whitespace-separated)") from None
    weights = np.asarray(values, dtype=np.float64)
    if weights.shape != (num_classes,) or not np.all(np.isfinite(weights)) or (weights < 0).any():
        raise ConfigError(f"{path}: expected {num_classes} finite non-negative class weights, "
                          f"got {weights.size} values")
    return weights
