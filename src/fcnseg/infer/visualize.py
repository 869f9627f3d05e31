"""Pictures of predictions: colour overlays with a legend, probability
heatmaps and image | ground truth | prediction | errors panels (palette PNGs of the
labels themselves: :func:`fcnseg.data.image_files.write_palette_png`).

numpy + Pillow only (matplotlib only for heatmap colormaps, imported lazily), never
torch: ``fcnseg predict --runtime onnx`` uses this module without importing torch.
Label maps are ``np.uint8 (H, W)`` class indices; 255 marks "ignore" in ground truth.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcnseg.constants import IGNORE_INDEX
from fcnseg.data.image_files import flat_palette
from fcnseg.infer.arrays import check_image
from fcnseg.labels import as_label_map, class_names_or_default

Palette = Sequence[Sequence[int]]  # [(r, g, b), ...], index = class id


def full_palette(palette: Palette | None) -> np.ndarray:
    """(256, 3) uint8: the dataset's colours for its classes, the VOC map for the rest.

    Keeping VOC colours for unused indices (255 above all) makes our PNGs readable by any
    VOC tool, and a missing palette falls back to plain VOC colours.
    """
    return np.asarray(flat_palette(palette), dtype=np.uint8).reshape(256, 3)


def colorize(labels: np.ndarray, palette: Palette | None) -> np.ndarray:
    """(H, W) indices -> (H, W, 3) uint8 colours."""
    return full_palette(palette)[as_label_map(labels)]


def blend(image: np.ndarray, labels: np.ndarray, palette: Palette | None, alpha: float = 0.4) -> np.ndarray:
    """Colour the photo by class: ``(1 - alpha) * image + alpha * colour``, (H, W, 3) uint8."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = check_image(image)
    colours = colorize(labels, palette)
    if colours.shape[:2] != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
    out = image.astype(np.float32) * (1.0 - alpha) + colours.astype(np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, palette: Palette | None,
            class_names: Sequence[str] | None, alpha: float = 0.4) -> Image.Image:
    """Blended overlay with a legend (swatch + name for each class present) on its right."""
    blended = Image.fromarray(blend(image, labels, palette, alpha))
    present = [int(c) for c in np.unique(labels) if c != IGNORE_INDEX]
    return attach_legend(blended, present, palette, class_names)


def attach_legend(picture: Image.Image, classes: Sequence[int], palette: Palette | None,
                  class_names: Sequence[str] | None) -> Image.Image:
    """Return ``picture`` with a white legend strip appended on its right.

    The legend sits beside the picture, not on it, so it hides no pixels even on tiny
    images; text scales with the picture height so it stays legible on large ones.
    """
    table = full_palette(palette)
    names = class_names_or_default(class_names, len(table))  # class_<i> where a name is missing
    font, size = _font(picture.height)
    pad, swatch = max(2, size // 3), size
    labels = [names[c] for c in classes]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textlength(t, font=font) for t in labels), default=0)
    legend_w = int(pad * 3 + swatch + text_w)
    legend_h = pad + len(classes) * (swatch + pad)
    out = Image.new("RGB", (picture.width + legend_w, max(picture.height, legend_h)), "white")
    out.paste(picture.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    x0 = picture.width + pad
    for k, (c, text) in enumerate(zip(classes, labels)):
        y = pad + k * (swatch + pad)
        draw.rectangle([x0, y, x0 + swatch - 1, y + swatch - 1], fill=tuple(int(v) for v in table[c]),
                       outline=(0, 0, 0))
        draw.text((x0 + swatch + pad, y), text, fill=(0, 0, 0), font=font)
    return out


def heatmap(prob: np.ndarray, cmap: str = "magma") -> Image.Image:
    """One class's probability map (H, W) in [0, 1] (float, or uint8 meaning p * 255) -> RGB."""
    from matplotlib import colormaps  # lazy (slow import): only heatmaps need it

    if prob.dtype == np.uint8:
        idx = prob
    else:
        idx = np.clip(np.rint(np.asarray(prob, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    lut = (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)  # (256, 3)
    return Image.fromarray(lut[idx])


def error_panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, palette: Palette | None,
                class_names: Sequence[str] | None = None) -> Image.Image:
    """image | ground truth | prediction | errors, side by side, each titled.

    Errors panel: correct pixels show the photo dimmed to grey, wrong pixels red,
    ignore pixels (255 in ``gt``) mid-grey. Its title gives the pixel accuracy.
    """
    image = check_image(image)
    gt, pred = as_label_map(gt), as_label_map(pred)
    if not (gt.shape == pred.shape == image.shape[:2]):
        raise ValueError(f"image {image.shape[:2]}, ground truth {gt.shape} and prediction {pred.shape} "
                         f"must have the same size")
    valid = gt != IGNORE_INDEX
    wrong = valid & (gt != pred)
    grey = image.astype(np.float32).mean(axis=2, keepdims=True) * 0.5 + 64.0  # dimmed photo
    err = np.repeat(grey, 3, axis=2).astype(np.uint8)
    err[wrong] = (255, 0, 0)
    err[~valid] = (128, 128, 128)
    n_valid = int(valid.sum())
    acc = f"{100.0 * (1 - wrong.sum() / n_valid):.1f}%" if n_valid else "n/a"
    tiles = [("image", image), ("ground truth", colorize(gt, palette)),
             ("prediction", colorize(pred, palette)), (f"errors (acc {acc})", err)]
    h, w = image.shape[:2]
    font, size = _font(h)
    title_h, gap = size + size // 2, max(2, size // 4)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # Titles may be wider than a tiny image: widen each cell to fit its title.
    cell_w = max(w, *(int(probe.textlength(t, font=font)) + 2 for t, _ in tiles))
    panel = Image.new("RGB", (4 * cell_w + 3 * gap, h + title_h), "white")
    draw = ImageDraw.Draw(panel)
    for k, (title, arr) in enumerate(tiles):
        x = k * (cell_w + gap)
        draw.text((x + 1, 1), title, fill=(0, 0, 0), font=font)
        panel.paste(Image.fromarray(arr), (x, title_h))
    classes = sorted({int(c) for c in np.unique(np.concatenate([gt[valid], pred.reshape(-1)]))})
    return attach_legend(panel, classes, palette, class_names)


def _font(height: int) -> tuple[ImageFont.ImageFont, int]:
    """A font whose size follows the picture height (Pillow's bundled font: no system fonts needed)."""
    size = int(min(48, max(11, height // 40)))
    try:
        return ImageFont.load_default(size=size), size
    except (TypeError, OSError):  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default(), 11
