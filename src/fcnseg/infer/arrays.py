"""numpy arrays around the network: checked RGB input, ImageNet normalisation, softmax.

numpy + Pillow only (never torch), shared by the torch and ONNX runtimes.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from fcnseg.constants import IMAGENET_MEAN, IMAGENET_STD
from fcnseg.data.image_files import read_image


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` as a uint8 (H, W, 3) RGB array with H, W >= 1; ValueError otherwise."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: {image.shape}")
    return image


def as_rgb_array(image: Any) -> np.ndarray:
    """A PIL image, a uint8 (H, W, 3) / (H, W) array, or a path -> contiguous uint8 (H, W, 3)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"image array must be (H, W, 3) RGB (or (H, W) grayscale), got shape {a.shape}; "
                         f"for several images pass a list of them (segment returns a list)")
    if a.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 0..255, got {a.dtype}; "
                         f"convert with (x * 255).round().astype(numpy.uint8) if it is 0..1 float")
    return np.ascontiguousarray(a[..., :3])


def as_image_list(image: Any) -> list | None:
    """The images of a list/tuple of images or of a (B, H, W, C) array; None for one image.

    A list of numbers (a nested-list image) is one image, not a list of images.
    """
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return list(image)  # B arrays (H, W, C)
    if not isinstance(image, (list, tuple)):
        return None
    if not image:
        raise ValueError("segment got an empty list of images")
    if all(isinstance(im, (str, os.PathLike, Image.Image, np.ndarray)) for im in image):
        return list(image)
    return None


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) RGB -> float32 (1, 3, h, w), ImageNet-normalised (as in training)."""
    x = image.astype(np.float32).transpose(2, 0, 1)  # (3, h, w)
    x *= 1.0 / 255.0
    x -= np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    x /= np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return x[None]


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Softmax along ``axis``, in place on ``logits`` (float32) to spare a full-size copy."""
    logits -= logits.max(axis=axis, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=axis, keepdims=True)
    return logits
