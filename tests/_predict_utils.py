"""Helpers for the predict / tiled / crf / export / api tests: tiny models and checkpoints."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Only the tests that run the CRF itself need pydensecrf2 (tiling, the install hint, ... do not).
# The reason says "not installed": FCNSEG_REQUIRE_EXTRAS=1 (CI) turns such a skip into a failure.
needs_pydensecrf = pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is None,
                                      reason="pydensecrf2 is not installed (pip install pydensecrf2)")

CLASS_NAMES = ["background", "red thing", "green/thing", "blue", "other"]
PALETTE = [(0, 0, 0), (200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def tiny_model(num_classes: int = 5, geometry: str = "modern", seed: int = 0) -> torch.nn.Module:
    """fcn8s_small (width 8) with random score layers.

    FCN score layers start at zero (as in the paper), which would make every prediction
    class 0; random ones give varied, spatially structured predictions to compare.
    """
    import fcnseg

    torch.manual_seed(seed)
    model = fcnseg.build_model("fcn8s_small", num_classes=num_classes, geometry=geometry, width=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("score"):
                torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def save_tiny_checkpoint(path: Path, geometry: str = "modern", palette=PALETTE,
                         class_names=CLASS_NAMES, seed: int = 0) -> Path:
    from fcnseg.checkpoint import save_checkpoint

    fields = {}
    if class_names is not None:
        fields["class_names"] = list(class_names)
    if palette is not None:
        fields["palette"] = [list(c) for c in palette]
    save_checkpoint(path, tiny_model(len(CLASS_NAMES), geometry, seed), **fields)
    return path


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 (h, w, 3) image: smooth random colour blobs (bilinear upsampled noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 16) + 1, max(1, w // 16) + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
