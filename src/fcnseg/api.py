"""Python API: load a trained model and segment images in two lines.

    import fcnseg
    model = fcnseg.load_model("runs/voc/best.pt")              # eval mode, CPU
    labels = fcnseg.segment(model, "photo.jpg")                 # uint8 (H, W) class indices
    labels, probs = fcnseg.segment(model, pil_image, return_probs=True)   # probs (C, H, W)
    model.class_names, model.palette                            # from the checkpoint

Images of any size are segmented at their own size (never resized).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fcnseg.errors import ConfigError


class TorchRunner:
    """Adapts an fcnseg ``nn.Module`` to the numpy runner interface of :mod:`fcnseg.inference`.

    ``runner(x)``: float32 (B, 3, h, w) normalised numpy -> float32 (B, C, h, w) numpy logits,
    computed on the model's device under ``torch.inference_mode``.
    """

    is_fcnseg_runner = True

    def __init__(self, model, device: str | None = None):
        import torch

        self.model = model.eval()
        param = next(model.parameters(), None)
        self.device = torch.device(device) if device else (param.device if param is not None
                                                           else torch.device("cpu"))
        self.dtype = param.dtype if param is not None else torch.float32
        cfg = getattr(model, "fcn_config", {}) or {}
        self.num_classes = int(getattr(model, "num_classes", None) or cfg["num_classes"])
        self.class_names = getattr(model, "class_names", None)
        self.palette = getattr(model, "palette", None)

        self._fast = None  # CPU fast path, built on first use

    def _runnable(self):
        """The module to run: on CPU in fp32, a prepacked copy (1.4-1.6x faster, same numbers)."""
        import os

        import torch

        from fcnseg.models.fastpath import fastpath_unavailable, optimize_for_cpu_inference

        if self.device.type != "cpu" or self.dtype != torch.float32 or os.environ.get("FCNSEG_EAGER"):
            return self.model
        if self._fast is None:
            # Unavailable (no oneDNN ops in this torch build): eager is correct, only slower.
            self._fast = self.model if fastpath_unavailable() else optimize_for_cpu_inference(self.model, (64, 64))
        return self._fast

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)
            try:
                out = self._runnable()(t)
            except torch.OutOfMemoryError:
                raise MemoryError(f"out of memory segmenting a {x.shape[2]}x{x.shape[3]} image on "
                                  f"{self.device}; use tiled inference (--tile auto / tile=...)") from None
        return out.float().cpu().numpy()


def resolve_device(device: str | None) -> str:
    """``"auto"`` -> cuda if available else cpu; others are checked to exist."""
    import torch

    device = device or "cpu"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    try:
        torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a valid torch device (cpu, cuda, cuda:1, ...)") from None
    return device


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Load an fcnseg checkpoint as a model ready for inference (eval mode, on ``device``).

    The model carries ``class_names`` (list of str), ``palette`` (list of (r, g, b)) and
    ``num_classes``. A ``.onnx`` file gives an :class:`fcnseg.onnx_runtime.OnnxModel` with
    the same attributes (torch is then not used to run it).
    """
    from fcnseg.inference import class_names_or_default

    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from fcnseg.onnx_runtime import OnnxModel

        return OnnxModel(path, device=device)
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.data.io import default_palette

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    n = int(ckpt["model"]["num_classes"])
    model.num_classes = n
    model.class_names = class_names_or_default(ckpt.get("class_names"), n)
    palette = ckpt.get("palette") or default_palette(n)
    model.palette = [tuple(int(v) for v in c) for c in palette]
    model.source = str(path)
    return model.to(resolve_device(device)).eval()


def as_rgb_array(image: Any) -> np.ndarray:
    """A PIL image, a uint8 (H, W, 3) / (H, W) array, or a path -> contiguous uint8 (H, W, 3)."""
    if isinstance(image, (str, os.PathLike)):
        from fcnseg.data.io import read_image

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


def segment(model, image: Any, *, return_probs: bool = False, tile: int | str | None = None,
            overlap: int | None = None, crf: bool | dict = False):
    """Segment one image at its own size, or each image of a list.

    ``image``: PIL image, uint8 (H, W, 3) array or a path. ``tile``: None (whole image),
    an int tile size (``overlap`` default tile/8), or ``"auto"`` (tiles only above a pixel
    budget; bounded memory for huge images). ``crf``: True or a dict of
    :func:`fcnseg.crf.dense_crf` keywords. Returns labels ``np.uint8 (H, W)``, or
    ``(labels, probs float32 (C, H, W))`` with ``return_probs``.

    A list (or tuple) of such images, or a uint8 array (B, H, W, 3), gives a list of those
    results in the same order. The images may differ in size: each is segmented on its own,
    one after the other (no batching, so the results equal single calls exactly).
    """
    from fcnseg.inference import segment_array

    kwargs = dict(return_probs=return_probs, tile=tile, overlap=overlap, crf=crf)
    images = _as_image_list(image)
    if images is not None:
        return [segment(model, im, **kwargs) for im in images]
    return segment_array(model, as_rgb_array(image), **kwargs)


def _as_image_list(image: Any) -> list | None:
    """The images of a list/tuple of images or of a (B, H, W, C) array; None for one image.

    A list of numbers (a nested-list image) is one image, not a list of images.
    """
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return list(image)
    if not isinstance(image, (list, tuple)):
        return None
    if not image:
        raise ValueError("segment got an empty list of images")
    if all(isinstance(im, (str, os.PathLike, Image.Image, np.ndarray)) for im in image):
        return list(image)
    return None
