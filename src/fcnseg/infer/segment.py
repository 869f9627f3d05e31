"""Whole-image and tiled segmentation of numpy images, for any runner (:mod:`fcnseg.infer.runner`).

numpy-only: torch is imported only to wrap an ``nn.Module`` passed in directly, so the
ONNX path never imports it. Optional dense-CRF refinement (:mod:`fcnseg.infer.crf`).

Tiled inference in bounded memory: full-size per-class logits do not fit for large
images (21 classes x 8000 x 8000 x 4 B = 5.4 GB). :func:`predict_tiled` therefore works in
*bands*: one row of overlapping tiles at a time. Each tile's logits are multiplied by a
smooth window (raised-cosine ramps over the overlap on sides that have a neighbour, see
:func:`window_1d`) and added into a band buffer ``acc (C, band_h, W)`` together with the
window itself into ``wsum (band_h, W)``. Once a band is done, the rows above the next
band's first row can receive no more contributions: they are normalised (``acc / wsum``)
and reduced to labels (and, if asked, probabilities), and the remaining overlap rows move
to the top of the buffer. Peak memory is thus O(C * (tile + align) * W) for the buffer
plus the image and the label map, not O(C * H * W): for 8000 x 8000, 21 classes, 1024 px
tiles, the buffer is 0.7 GB and the whole process peaks at ~1.5 GB (tests/test_tiled.py
measures it). Tile origins are multiples of ``align`` (the network's output stride, 32)
so every tile sees the same pooling grid as whole-image inference; the last tile in each
direction is stretched (by < ``align`` px) to end at the border.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from fcnseg.errors import ConfigError
from fcnseg.infer.arrays import check_image, normalize, softmax
from fcnseg.infer.crf import dense_crf
from fcnseg.infer.runner import as_runner

# `tile="auto"`: whole-image inference up to this many pixels, tiles of AUTO_TILE beyond.
AUTO_TILE_PIXELS = 2048 * 2048
AUTO_TILE = 1024
AUTO_OVERLAP = 256
# Rows normalised and reduced at once when a band is finalised (bounds temporaries).
_FINALISE_ROWS = 64


def predict_logits(model, image: np.ndarray) -> np.ndarray:
    """Whole-image logits: uint8 (H, W, 3) -> float32 (C, H, W). The network takes any size."""
    runner = as_runner(model)
    logits = runner(normalize(check_image(image)))  # (1, C, H, W)
    return np.ascontiguousarray(logits[0], dtype=np.float32)


def tile_grid(n: int, tile: int, overlap: int, align: int = 32) -> list[tuple[int, int]]:
    """Tiles ``(start, size)`` covering ``[0, n)`` along one axis.

    Starts are multiples of ``align`` (same pooling phase as the whole image); neighbours
    overlap by at least ``overlap``; the last tile ends at ``n`` and may be up to
    ``align - 1`` px longer than ``tile``. One tile of size ``n`` if ``n <= tile``.
    """
    if n <= tile:
        return [(0, n)]
    stride = (tile - overlap) // align * align
    if stride < align:
        raise ConfigError(f"tile {tile} with overlap {overlap} leaves a step below {align} px; "
                          f"use a tile at least {overlap + align} px or a smaller --overlap")
    last = (n - tile) // align * align
    starts = [s for s in range(0, n - tile, stride) if s < last] + [last]
    return [(s, tile) for s in starts[:-1]] + [(last, n - last)]


def window_1d(size: int, ramp_lo: int, ramp_hi: int) -> np.ndarray:
    """float32 (size,) blending weights: 1 inside, smooth ramps of ``ramp_lo``/``ramp_hi`` px
    at the ends (0 length: no ramp, for sides on the image border).

    Tile borders see zero padding instead of image context, and in an FCN that corrupts
    logits up to ~100+ px inwards (measured on fcn8s_small). So each ramp is ~0 over its
    outer quarter, rises as a raised cosine over the middle half and is 1 after: a pixel
    in an overlap is taken mostly from the tile where it is deeper inside, and the
    neighbouring tiles' ramps are mirror images, so their weights sum to ~1 (no seams).
    Weights stay >= 1e-3 so no pixel ever has zero total weight.
    """
    w = np.ones(size, dtype=np.float32)
    for ramp, sl in ((ramp_lo, slice(None)), (ramp_hi, slice(None, None, -1))):
        ramp = min(ramp, size // 2)
        if ramp > 0:
            margin = ramp // 4
            rise = max(ramp - 2 * margin, 1)
            t = np.clip((np.arange(ramp, dtype=np.float32) - margin + 0.5) / rise, 0.0, 1.0)
            w[sl][:ramp] = np.minimum(w[sl][:ramp], np.maximum(0.5 - 0.5 * np.cos(np.pi * t), 1e-3))
    return w


def predict_tiled(model, image: np.ndarray, *, tile: int = 512, overlap: int | None = None,
                  num_classes: int | None = None, return_probs: bool = False,
                  probs_dtype: type = np.float32, align: int = 32,
                  progress: Callable[[int], None] | None = None):
    """Segment ``image`` (uint8 (H, W, 3)) tile by tile with blended logits, in bounded memory.

    Returns labels ``uint8 (H, W)``, or ``(labels, probs (C, H, W))`` with
    ``return_probs`` (``probs_dtype`` np.uint8 stores ``round(p * 255)``, a quarter of the
    memory, which is all a heatmap needs); note that probabilities are full size,
    C x H x W, unlike everything else here. ``overlap`` defaults to ``tile / 4``.
    ``progress(n)`` is called after each tile. See the module docstring for the algorithm.
    """
    runner = as_runner(model)
    image = check_image(image)
    overlap = default_overlap(tile) if overlap is None else int(overlap)
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ConfigError(f"need tile >= 1 and 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
    C = int(num_classes if num_classes is not None else runner.num_classes)
    if getattr(runner, "num_classes", C) != C:
        raise ConfigError(f"num_classes={C} but the model predicts {runner.num_classes} classes")
    if C > 255:
        raise ConfigError(f"{C} classes do not fit uint8 labels (255 is reserved for 'ignore')")
    H, W = image.shape[:2]
    rows, cols = tile_grid(H, tile, overlap, align), tile_grid(W, tile, overlap, align)
    # Window per tile column; ramps only towards neighbours (image borders need none).
    wx = [window_1d(w, overlap if i > 0 else 0, overlap if i < len(cols) - 1 else 0)
          for i, (_, w) in enumerate(cols)]
    band_h = max(h for _, h in rows)
    acc = np.zeros((C, band_h, W), dtype=np.float32)  # weighted logit sums, band rows
    wsum = np.zeros((band_h, W), dtype=np.float32)     # window sums, band rows
    labels = np.empty((H, W), dtype=np.uint8)
    probs = np.empty((C, H, W), dtype=probs_dtype) if return_probs else None

    for r, (y0, h) in enumerate(rows):
        wy = window_1d(h, overlap if r > 0 else 0, overlap if r < len(rows) - 1 else 0)
        for c, (x0, w) in enumerate(cols):
            logits = runner(normalize(image[y0:y0 + h, x0:x0 + w]))[0]  # (C, h, w)
            if logits.shape != (C, h, w):
                raise ValueError(f"model returned logits {logits.shape} for a tile of {h}x{w}, "
                                 f"expected {(C, h, w)}")
            weight = wy[:, None] * wx[c][None, :]  # (h, w)
            if not logits.flags.writeable:
                logits = logits.copy()
            logits *= weight  # in place: no (C, h, w) temporary per tile
            acc[:, :h, x0:x0 + w] += logits
            wsum[:h, x0:x0 + w] += weight
            if progress is not None:
                progress(1)
        # Buffer row 0 is image row y0. Rows above the next band's start are complete.
        y_next = rows[r + 1][0] if r + 1 < len(rows) else H
        done = y_next - y0
        _finalise(acc, wsum, done, y0, labels, probs)
        keep = h - done  # overlap rows the next band still adds to
        if keep > 0:
            acc[:, :keep] = acc[:, done:done + keep]  # numpy copes with the overlapping move
            wsum[:keep] = wsum[done:done + keep]
        acc[:, keep:] = 0.0
        wsum[keep:] = 0.0
    return (labels, probs) if return_probs else labels


def _finalise(acc: np.ndarray, wsum: np.ndarray, n: int, y0: int, labels: np.ndarray,
              probs: np.ndarray | None) -> None:
    """Normalise buffer rows ``[0, n)`` and write labels/probs for image rows ``[y0, y0 + n)``."""
    for a in range(0, n, _FINALISE_ROWS):  # chunks of rows: temporaries stay small
        b = min(n, a + _FINALISE_ROWS)
        logits = acc[:, a:b] / wsum[a:b]  # (C, rows, W)
        labels[y0 + a:y0 + b] = logits.argmax(axis=0)
        if probs is not None:
            p = softmax(logits)
            if probs.dtype == np.uint8:
                p = np.rint(p * 255.0)
            probs[:, y0 + a:y0 + b] = p


def default_overlap(tile: int) -> int:
    """tile / 4: an FCN's border effects reach ~100 px in, so overlaps need to be generous."""
    return max(32, tile // 4) if tile > 64 else tile // 4


def resolve_tiling(tile: int | str | None, overlap: int | None,
                   size: tuple[int, int]) -> tuple[int, int] | None:
    """``(tile, overlap)`` to use for an image of ``size`` (H, W), or None for whole-image.

    ``tile`` None: whole image; an int: always tile; ``"auto"``: tile (AUTO_TILE px) only
    when the image has more than AUTO_TILE_PIXELS pixels. ``overlap`` defaults to tile / 4.
    """
    if tile is None:
        return None
    if tile == "auto":
        if size[0] * size[1] <= AUTO_TILE_PIXELS:
            return None
        t = AUTO_TILE
        return t, (AUTO_OVERLAP if overlap is None else int(overlap))
    t = int(tile)
    ov = default_overlap(t) if overlap is None else int(overlap)
    if t < 1 or not 0 <= ov < t:
        raise ConfigError(f"--tile {t} --overlap {ov}: need a positive tile and 0 <= overlap < tile")
    return t, ov


def segment_array(model, image: np.ndarray, *, tile: int | str | None = None,
                  overlap: int | None = None, crf: bool | dict = False,
                  return_probs: bool = False, probs_dtype: type = np.float32, precision: str = "auto"):
    """Labels ``uint8 (H, W)`` (and ``probs (C, H, W)`` if ``return_probs``) for one image.

    ``precision`` (an ``nn.Module``): ``auto`` (measured, :mod:`fcnseg.precision`), ``fp32``,
    ``bf16``; a runner computes in its own (``int8`` for an int8-exported model).

    ``crf``: True (DeepLab defaults) or a dict of :func:`fcnseg.infer.crf.dense_crf` keywords to
    refine the labels with a dense CRF; it needs float probabilities of the whole image.
    """
    runner = as_runner(model, precision)
    image = check_image(image)
    tiling = resolve_tiling(tile, overlap, image.shape[:2])
    need_probs = return_probs or bool(crf)
    if crf:
        probs_dtype = np.float32
    if tiling is None:
        logits = predict_logits(runner, image)  # (C, H, W)
        labels = logits.argmax(axis=0).astype(np.uint8)
        probs = softmax(logits) if need_probs else None
        if probs is not None and probs_dtype == np.uint8:
            probs = np.rint(probs * 255.0).astype(np.uint8)
    else:
        out = predict_tiled(runner, image, tile=tiling[0], overlap=tiling[1],
                            return_probs=need_probs, probs_dtype=probs_dtype)
        labels, probs = out if need_probs else (out, None)
    if crf:
        labels = dense_crf(image, probs, **(crf if isinstance(crf, dict) else {}))
    return (labels, probs) if return_probs else labels


__all__ = ["predict_logits", "predict_tiled", "tile_grid", "window_1d", "resolve_tiling", "default_overlap",
           "segment_array", "AUTO_TILE", "AUTO_TILE_PIXELS", "AUTO_OVERLAP"]
