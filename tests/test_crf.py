"""Dense-CRF refinement: snaps blurred, shifted predictions to colour edges."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf")

from fcnseg.infer.crf import CRF_DEFAULTS, dense_crf, refine  # noqa: E402
from fcnseg.errors import ConfigError  # noqa: E402


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


def test_crf_moves_boundary_to_colour_edge():
    image, probs, truth = _edge_scene()
    before = float((probs.argmax(0) == truth).mean())
    labels = dense_crf(image, probs)
    after = float((labels == truth).mean())
    print(f"pixel accuracy: argmax {100 * before:.2f}% -> CRF {100 * after:.2f}%")
    assert after > before + 0.05  # shift of 7 px on a 64 px row = ~11% wrong before
    assert after >= 0.98


def test_crf_output_shape_dtype_and_determinism():
    image, probs, _ = _edge_scene(h=23, w=37, edge=15)
    a = dense_crf(image, probs, iters=3)
    b = dense_crf(image, probs, iters=3)
    assert a.shape == (23, 37) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0, 1}
    assert CRF_DEFAULTS["iters"] == 5 and CRF_DEFAULTS["sxy_gauss"] == 3


def test_refine_accepts_torch_logits_and_uint8_probs():
    import torch

    image, probs, _ = _edge_scene()
    logits = torch.from_numpy(np.log(probs)) * 1.0  # softmax(log p) = p
    np.testing.assert_array_equal(refine(image, logits), dense_crf(image, probs))
    q = np.rint(probs * 255).astype(np.uint8)
    assert (dense_crf(image, q) == dense_crf(image, probs)).mean() > 0.99


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


def test_evaluate_crf_effect_runs_on_a_dataset(synthetic_voc):
    from _predict_utils import tiny_model
    from fcnseg.engine.evaluate import evaluate_crf_effect
    from fcnseg.data.datasets import open_dataset

    ds = open_dataset(synthetic_voc, split="val")
    result = evaluate_crf_effect(tiny_model(ds.num_classes), ds, max_images=2, progress=False)
    assert result["images"] == 2
    for key in ("without", "with"):
        assert 0.0 <= result[key]["pixel_acc"] <= 1.0
        assert 0.0 <= result[key]["bf"] <= 1.0  # boundary F1 is measured with and without
        assert len(result[key]["bf_per_class"]) == ds.num_classes
