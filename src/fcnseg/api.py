"""Python API: load a trained model and segment images in two lines.

    import fcnseg
    model = fcnseg.load_model("runs/voc/best.pt")              # eval mode, CPU
    labels = fcnseg.segment(model, "photo.jpg")                 # uint8 (H, W) class indices
    labels, probs = fcnseg.segment(model, pil_image, return_probs=True)   # probs (C, H, W)
    model.class_names, model.palette                            # from the checkpoint

Images of any size are segmented at their own size (never resized). The work is done by
:mod:`fcnseg.infer` (api -> infer, never the reverse).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fcnseg.data.image_files import default_palette
from fcnseg.infer.arrays import as_image_list, as_rgb_array
from fcnseg.infer.onnx_runner import OnnxModel
from fcnseg.infer.openvino_runner import OpenVinoModel
from fcnseg.infer.segment import segment_array
from fcnseg.labels import class_names_or_default


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Load an fcnseg checkpoint as a model ready for inference (eval mode, on ``device``).

    The model carries ``class_names`` (list of str), ``palette`` (list of (r, g, b)) and
    ``num_classes``. A ``.onnx`` file gives an :class:`fcnseg.infer.onnx_runner.OnnxModel`, an
    OpenVINO ``.xml`` (from ``fcnseg export --format openvino``) an
    :class:`fcnseg.infer.openvino_runner.OpenVinoModel`, with the same attributes (torch is then
    never imported). ``device``: ``cpu``, ``cuda``,
    ``cuda:N`` or ``auto`` (see :func:`fcnseg.engine.runtime.resolve_device`).
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxModel(path, device=device)
    if path.suffix.lower() == ".xml":
        return OpenVinoModel(path, device=device)
    # Lazy: the torch stack is needed for .pt checkpoints only; exported models never import torch.
    from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
    from fcnseg.engine.runtime import resolve_device

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    n = int(ckpt["model"]["num_classes"])
    model.num_classes = n
    model.class_names = class_names_or_default(ckpt.get("class_names"), n)
    palette = ckpt.get("palette") or default_palette(n)
    model.palette = [tuple(int(v) for v in c) for c in palette]
    model.source = str(path)
    return model.to(resolve_device(device)).eval()


def segment(model, image: Any, *, return_probs: bool = False, tile: int | str | None = None,
            overlap: int | None = None, crf: bool | dict = False, precision: str = "auto"):
    """Segment one image at its own size, or each image of a list.

    ``image``: PIL image, uint8 (H, W, 3) array or a path. ``tile``: None (whole image),
    an int tile size (``overlap`` default tile/4), or ``"auto"`` (tiles only above a pixel
    budget; bounded memory for huge images). ``crf``: True or a dict of
    :func:`fcnseg.infer.crf.dense_crf` keywords. ``precision``: ``auto`` (default: bf16 where a
    short probe measures it faster on this CPU, else fp32; see :mod:`fcnseg.precision`),
    ``fp32``, ``bf16``, or ``int8`` for a model exported with ``fcnseg export --int8``. The
    prepared fast path is cached per model and rebuilt when its weights change. Returns labels ``np.uint8 (H, W)``, or
    ``(labels, probs float32 (C, H, W))`` with ``return_probs``.

    A list (or tuple) of such images, or a uint8 array (B, H, W, 3), gives a list of those
    results in the same order. The images may differ in size: each is segmented on its own,
    one after the other (no batching, so the results equal single calls exactly).
    """
    kwargs = dict(return_probs=return_probs, tile=tile, overlap=overlap, crf=crf, precision=precision)
    images = as_image_list(image)
    if images is not None:
        return [segment(model, im, **kwargs) for im in images]
    return segment_array(model, as_rgb_array(image), **kwargs)
