"""Shared fixtures: tiny generated datasets and the optional real CamVid copy."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
from PIL import Image

# Bit-exact comparisons between runs in this process need MKL's reproducible mode, set before
# MKL's first call (see fcnseg.engine.rng.reproducible_mkl).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
# `--precision auto` measures the CPU and may pick bf16 (fcnseg.precision); tests compare
# against fp32 references, so auto is pinned to fp32 here. tests/test_precision.py unpins it.
os.environ.setdefault("FCNSEG_PRECISION", "fp32")

# A skip for a missing package fails the run when FCNSEG_REQUIRE_EXTRAS=1 (CI): tests/require_extras.py
pytest_plugins = ["require_extras"]

REPO = Path(__file__).resolve().parents[1]
# CamVid in exact VOC layout, shared between checkouts: <repo>/../shared/data/camvid-voc
CAMVID = REPO.parent / "shared" / "data" / "camvid-voc"


@pytest.fixture
def camvid_root() -> Path:
    """The real CamVid (VOC layout) folder; the test is skipped only when it is absent."""
    if not CAMVID.is_dir():
        pytest.skip(f"real data not found at {CAMVID}")
    return CAMVID


@pytest.fixture(scope="session")
def synthetic_voc(tmp_path_factory) -> Path:
    """A tiny generated VOC-layout dataset (6 train / 3 val, 32x48, 4 classes). Read-only."""
    from fcnseg.data.synthetic import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("synthetic_voc"), n_train=6, n_val=3,
                              size=(32, 48), num_classes=4, seed=0)


def save_palette_mask(labels: np.ndarray, path: Path, palette: Sequence[int] | None = None) -> None:
    """Write ``labels`` (H, W) as a 'P' PNG (VOC colours unless ``palette`` is a flat list)."""
    from fcnseg.data.image_files import flat_palette

    im = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.astype(np.uint8).tobytes())
    im.putpalette(list(palette) if palette is not None else flat_palette(None))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def write_voc(root: Path, splits: dict[str, Sequence[tuple[str, np.ndarray, np.ndarray]]],
              class_names: Sequence[str] | None = None, palette: Sequence[int] | None = None) -> Path:
    """Write a VOC-layout dataset: ``splits = {"train": [(id, image (H,W,3), mask (H,W)), ...]}``."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        for id_, image, mask in items:
            Image.fromarray(image).save(root / "JPEGImages" / f"{id_}.jpg", quality=95)
            save_palette_mask(mask, root / "SegmentationClass" / f"{id_}.png", palette)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
            "".join(f"{id_}\n" for id_, _, _ in items))
    if class_names is not None:
        (root / "class_names.txt").write_text("".join(f"{n}\n" for n in class_names))
    return root


@pytest.fixture
def make_voc() -> Callable[..., Path]:
    """``make_voc(root, splits, class_names=None, palette=None) -> root`` (see :func:`write_voc`)."""
    return write_voc


def random_pair(rng: np.random.Generator, h: int = 24, w: int = 32, num_classes: int = 3):
    """A random image (H, W, 3) uint8 and a blocky mask (H, W) uint8 with labels < num_classes."""
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = np.kron(rng.integers(0, num_classes, size=((h + 3) // 4, (w + 3) // 4)),
                   np.ones((4, 4), dtype=np.int64))[:h, :w].astype(np.uint8)
    return image, mask
