"""Dense-CRF refinement: snaps blurred, shifted predictions to colour edges."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from fcnseg.errors import ConfigError
from fcnseg.infer.crf import CRF_DEFAULTS, dense_crf, refine

from _predict_utils import needs_pydensecrf


def _edge_scene(h: int = 48, w: int = 64, edge: int = 30, shift: int = 7, blur: float = 6.0, seed: int = 0):
    """Image: red left of column ``edge``, blue right (+ noise); probabilities for 2 classes
    whose boundary is ``shift`` px too far right and blurred over ~``blur`` px, as an FCN's
    coarse upsampled scores are. Returns (image, probs (2,H,W), true labels)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.uint8)
    truth[:, edge:] = 1
    image = np.where(truth[..., None] == 0, np.array([200, 40, 40]), np.array([40, 60, 200]))
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    x = np.arange(w, dtype=np.float32)
    p1 = 1.0 / (1.0 + np.exp(-(x - (edge + shift)) / blur))  # P(class 1) along a row
    p1 = np.clip(p1 + rng.normal(0, 0.05, (h, w)), 0.02, 0.98).astype(np.float32)
    probs = np.stack([1 - p1, p1])
    return image, probs, truth


@needs_pydensecrf
def test_crf_moves_boundary_to_colour_edge():
    image, probs, truth = _edge_scene()
    before = float((probs.argmax(0) == truth).mean())
    labels = dense_crf(image, probs)
    after = float((labels == truth).mean())
    print(f"pixel accuracy: argmax {100 * before:.2f}% -> CRF {100 * after:.2f}%")
    assert after > before + 0.05  # shift of 7 px on a 64 px row = ~11% wrong before
    assert after >= 0.98


@needs_pydensecrf
def test_crf_output_shape_dtype_and_determinism():
    image, probs, _ = _edge_scene(h=23, w=37, edge=15)
    a = dense_crf(image, probs, iters=3)
    b = dense_crf(image, probs, iters=3)
    assert a.shape == (23, 37) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0, 1}
    assert CRF_DEFAULTS["iters"] == 5 and CRF_DEFAULTS["sxy_gauss"] == 3


@needs_pydensecrf
def test_refine_accepts_torch_logits_and_uint8_probs():
    import torch

    image, probs, _ = _edge_scene()
    logits = torch.from_numpy(np.log(probs)) * 1.0  # softmax(log p) = p
    np.testing.assert_array_equal(refine(image, logits), dense_crf(image, probs))
    q = np.rint(probs * 255).astype(np.uint8)
    assert (dense_crf(image, q) == dense_crf(image, probs)).mean() > 0.99


@needs_pydensecrf
def test_crf_rejects_mismatched_inputs():
    image, probs, _ = _edge_scene()
    with pytest.raises(ValueError, match="matching the image"):
        dense_crf(image, probs[:, :-1])
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), probs)


def test_missing_pydensecrf_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, probs, _ = _edge_scene()
    with pytest.raises(ConfigError, match="pip install pydensecrf2"):
        dense_crf(image, probs)


class ShiftedEdgeRunner:
    """A stand-in FCN for images whose class changes at column ``edges[i]``: it answers with the
    boundary ``shift`` px too far right, blurred over ~``blur`` px (as coarse upsampled scores are).
    It finds the image's edge from the blue channel, so it works whatever order images come in."""

    is_fcnseg_runner = True
    num_classes = 2

    def __init__(self, shift: int, blur: float):
        self.shift, self.blur = shift, blur

    def __call__(self, x: np.ndarray) -> np.ndarray:  # (B, 3, h, w) normalised -> (B, 2, h, w)
        b, _, h, w = x.shape
        edge = (x[:, 2, h // 2] > 0).argmax(1)  # (B,) first blue column (normalised blue > 0)
        cols = np.arange(w, dtype=np.float32)[None]  # (1, w)
        # logit difference (class 1 - class 0); 0.5 px off the pixel grid: no argmax ties
        d = (cols - (edge[:, None] + self.shift - 0.5)) / self.blur  # (B, w)
        logits = np.stack([np.zeros_like(d), d], 1)  # (B, 2, w)
        return np.broadcast_to(logits[:, :, None, :], (b, 2, h, w)).astype(np.float32)


@needs_pydensecrf
def test_evaluate_crf_effect_has_the_known_answer(make_voc, tmp_path):
    """Two-colour images whose mask is the colour edge; predictions 5 px too far right. Without
    the CRF the scores follow from the geometry exactly; with it the boundary snaps to the edge."""
    from fcnseg.data.datasets import open_dataset
    from fcnseg.engine.evaluate import evaluate_crf_effect

    h, w, shift = 40, 64, 5
    edges = [20, 28, 36]
    items = []
    for i, edge in enumerate(edges):
        truth = np.zeros((h, w), np.uint8)
        truth[:, edge:] = 1
        image = np.where(truth[..., None] == 0, np.array([200, 40, 40]), np.array([40, 60, 200]))
        noise = np.random.default_rng(i).normal(0, 6, image.shape)
        items.append((f"im{i}", np.clip(image + noise, 0, 255).astype(np.uint8), truth))
    root = make_voc(tmp_path / "voc", {"val": items}, class_names=["red", "blue"])
    for id_, image, _ in items:  # lossless images: JPEG would smear the edge over a column
        (root / "JPEGImages" / f"{id_}.jpg").unlink()
        Image.fromarray(image).save(root / "JPEGImages" / f"{id_}.png")
    ds = open_dataset(root, "val")
    result = evaluate_crf_effect(ShiftedEdgeRunner(shift, blur=4.0), ds, progress=False)
    assert result["images"] == 3
    before, after = result["without"], result["with"]
    # Without the CRF, columns [edge, edge + shift) are wrong in every row: exact scores.
    assert before["pixel_acc"] == pytest.approx(1 - shift / w)
    assert before["iou"][0] == pytest.approx(sum(edges) / sum(e + shift for e in edges))
    assert before["iou"][1] == pytest.approx(sum(w - e - shift for e in edges) / sum(w - e for e in edges))
    print(f"CRF: pixel acc {100 * before['pixel_acc']:.2f}% -> {100 * after['pixel_acc']:.2f}%, "
          f"mIoU {100 * before['miou']:.2f}% -> {100 * after['miou']:.2f}%, BF {100 * before['bf']:.1f}% -> "
          f"{100 * after['bf']:.1f}%")
    # With it the boundary lands on the colour edge (measured: every pixel right); >= 99.5% leaves
    # room for a few noisy pixels, against 92.2% before. Boundary F1 (tolerance < 1 px here) goes
    # from nothing (every boundary 5 px off) to about all.
    assert after["pixel_acc"] >= 0.995
    assert after["miou"] >= 0.99 and before["miou"] < 0.86
    assert before["bf"] < 0.05 and after["bf"] >= 0.95
