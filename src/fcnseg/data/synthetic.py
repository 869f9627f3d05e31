"""A generated shapes dataset in PASCAL VOC layout, for the demo and the tests.

Each foreground class is one shape with a typical colour (circle = red, rectangle =
green, ...), jittered per object and with pixel noise, drawn 1-3 times on a textured
grey-ish background (sinusoidal stripes + noise). Like VOC, a 2-pixel band around
every object boundary is labelled 255 (ignore). Classes differ in shape *and* colour,
so a small FCN learns them to a high mIoU in minutes on a CPU.

Generation is deterministic: the same arguments give byte-identical files.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fcnseg.constants import IGNORE_INDEX
from fcnseg.data.image_files import flat_palette
from fcnseg.errors import ConfigError
from fcnseg.outputs import atomic_write_text

# class index -> (name, typical RGB colour); index 0 is the background.
SHAPES: list[tuple[str, tuple[int, int, int]]] = [
    ("background", (0, 0, 0)),
    ("circle", (220, 40, 40)),
    ("rectangle", (40, 190, 60)),
    ("triangle", (50, 80, 225)),
    ("ring", (235, 210, 40)),
    ("cross", (205, 50, 205)),
    ("diamond", (40, 205, 215)),
    ("star", (245, 130, 30)),
    ("hexagon", (120, 60, 175)),
]
MAX_CLASSES = len(SHAPES)


def _regular_polygon(cx: float, cy: float, r: float, n: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n))
            for k in range(n)]


def _draw_shape(draw: ImageDraw.ImageDraw, cls: int, cx: float, cy: float, r: float,
                rng: np.random.Generator) -> None:
    """Draw class ``cls``'s shape (fill 1) centred at (cx, cy) with radius ~r."""
    name = SHAPES[cls][0]
    angle = float(rng.uniform(0, 2 * math.pi))
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif name == "rectangle":  # axis-aligned, so it never looks like the diamond
        a = float(rng.uniform(0.6, 1.0))
        draw.rectangle([cx - r, cy - r * a, cx + r, cy + r * a], fill=1)
    elif name == "triangle":
        draw.polygon(_regular_polygon(cx, cy, r * 1.15, 3, angle), fill=1)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, width=max(2, round(r / 3)))
    elif name == "cross":
        t = r / 3
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=1)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=1)
    elif name == "diamond":
        draw.polygon([(cx, cy - r * 1.2), (cx + r * 0.8, cy), (cx, cy + r * 1.2), (cx - r * 0.8, cy)], fill=1)
    elif name == "star":
        pts = []
        for k in range(10):
            rr = r * (1.2 if k % 2 == 0 else 0.5)
            a = angle + math.pi * k / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        draw.polygon(pts, fill=1)
    else:  # hexagon
        draw.polygon(_regular_polygon(cx, cy, r, 6, angle), fill=1)


def make_sample(rng: np.random.Generator, size: tuple[int, int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One image uint8 (H, W, 3) and its mask uint8 (H, W) (labels 0..num_classes-1, 255)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Background: a low-saturation base colour, oriented stripes, noise.
    grey = rng.uniform(60, 190)
    base = grey + rng.uniform(-25, 25, size=3)
    theta, freq, phase = rng.uniform(0, math.pi), rng.uniform(0.04, 0.2), rng.uniform(0, 2 * math.pi)
    stripes = 22 * np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
    image = base[None, None, :] + stripes[..., None] + rng.normal(0, 10, size=(h, w, 3))
    label = np.zeros((h, w), dtype=np.uint8)

    canvas = Image.new("L", (w, h))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, num_classes))
        r = float(rng.uniform(0.12, 0.24)) * min(h, w)
        cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
        draw.rectangle([0, 0, w, h], fill=0)
        _draw_shape(draw, cls, float(cx), float(cy), r, rng)
        region = np.asarray(canvas, dtype=bool)  # (H, W)
        colour = np.asarray(SHAPES[cls][1], dtype=np.float64) + rng.uniform(-20, 20, size=3)
        shade = 1 + 0.15 * (xx - cx) / max(w, 1)  # gentle left-right shading
        obj = colour[None, None, :] * shade[..., None] + rng.normal(0, 8, size=(h, w, 3))
        image[region] = obj[region]  # later objects occlude earlier ones
        label[region] = cls

    # VOC-style ignore band: both pixels of every label change (4-neighbourhood) -> 255.
    band = np.zeros((h, w), dtype=bool)
    dx = label[:, 1:] != label[:, :-1]
    dy = label[1:, :] != label[:-1, :]
    band[:, 1:] |= dx
    band[:, :-1] |= dx
    band[1:, :] |= dy
    band[:-1, :] |= dy
    label[band] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_synthetic_voc(root: str | os.PathLike, n_train: int = 160, n_val: int = 40,
                       size: tuple[int, int] = (96, 128), num_classes: int = 6, seed: int = 0) -> Path:
    """Write a shapes dataset in VOC layout under ``root`` and return ``root``.

    Layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG, VOC
    colours), ``ImageSets/Segmentation/{train,val}.txt``, ``class_names.txt``.
    ``size`` is ``(H, W)``; ``num_classes`` (2..9) counts the background.
    """
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"num_classes must be in 2..{MAX_CLASSES} (background + shapes), got {num_classes}")
    h, w = (int(v) for v in size)
    if h < 16 or w < 16:
        raise ConfigError(f"size must be at least 16x16 pixels, got {size}")
    if n_train < 1 or n_val < 0:
        raise ConfigError(f"need n_train >= 1 and n_val >= 0, got {n_train}, {n_val}")
    root = Path(root)
    img_dir, mask_dir = root / "JPEGImages", root / "SegmentationClass"
    sets_dir = root / "ImageSets" / "Segmentation"
    for d in (img_dir, mask_dir, sets_dir):
        d.mkdir(parents=True, exist_ok=True)
    palette = flat_palette(None)
    splits: dict[str, list[str]] = {}
    for split_no, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        ids = []
        for i in range(n):
            # An independent stream per (seed, split, index): the files do not depend on n.
            rng = np.random.default_rng([seed, split_no, i])
            image, label = make_sample(rng, (h, w), num_classes)
            id_ = f"{split}_{i:05d}"
            Image.fromarray(image).save(img_dir / f"{id_}.jpg", quality=92)
            mask = Image.frombytes("P", (w, h), label.tobytes())
            mask.putpalette(palette)
            mask.save(mask_dir / f"{id_}.png")
            ids.append(id_)
        splits[split] = ids
    # Split files and class names are written last (atomically): a generation killed
    # midway leaves no split file, so the dataset is refused instead of half-used.
    atomic_write_text(root / "class_names.txt", "".join(f"{SHAPES[c][0]}\n" for c in range(num_classes)))
    for split, ids in splits.items():
        atomic_write_text(sets_dir / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    return root
