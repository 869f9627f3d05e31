"""Dense-CRF refinement of FCN predictions (Krähenbühl & Koltun, NIPS 2011).

A fully connected CRF over pixels, with a Gaussian smoothness kernel and an
appearance (bilateral: position + colour) kernel, snaps the FCN's coarse, blurred
class boundaries to colour edges. Defaults are DeepLab-LargeFOV's (Chen et al., ICLR
2015): smoothness ``w=3, sxy=3``; appearance ``w=4, sxy=121, srgb=5``; 5 mean-field
iterations. Needs ``pydensecrf2`` (module ``pydensecrf``), imported only when used.
numpy-only otherwise.

Hook for evaluation: :func:`refine` (one image + its logits/probabilities, numpy or
torch); :func:`fcnseg.engine.evaluate.evaluate_crf_effect` scores a dataset with and
without the CRF.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fcnseg.infer.arrays import check_image, softmax
from fcnseg.optional import require

CRF_DEFAULTS = dict(iters=5, sxy_gauss=3.0, compat_gauss=3.0,
                    sxy_bilateral=121.0, srgb=5.0, compat_bilateral=4.0)
_PROB_FLOOR = 1e-8  # -log(0) = inf: clip probabilities before taking the unary


def require_pydensecrf():
    """Import pydensecrf's ``densecrf`` module, or raise a ConfigError saying how to install it."""
    return require("pydensecrf.densecrf", "CRF refinement (--crf)")


def dense_crf(image: np.ndarray, probs: np.ndarray, iters: int = 5, sxy_gauss: float = 3.0,
              compat_gauss: float = 3.0, sxy_bilateral: float = 121.0, srgb: float = 5.0,
              compat_bilateral: float = 4.0) -> np.ndarray:
    """Refine class probabilities with a dense CRF; returns labels ``uint8 (H, W)``.

    ``image``: RGB uint8 (H, W, 3); ``probs``: float (C, H, W), softmax output
    (each pixel sums to 1). Deterministic (mean-field inference has no randomness).
    """
    dcrf = require_pydensecrf()
    # pydensecrf's Cython signature wants a writable C-contiguous buffer (it never writes).
    image = np.require(check_image(image), requirements=["C", "W"])
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs must be (C, H, W) matching the image {image.shape[:2]}, got {probs.shape}")
    if probs.dtype == np.uint8:  # quantised p * 255
        probs = probs.astype(np.float32) / 255.0
    C, H, W = probs.shape
    if C > 255:
        raise ValueError(f"{C} classes do not fit uint8 labels")
    # Unary energy = -log p, (C, H*W) float32 C-contiguous as the C++ code expects.
    unary = -np.log(np.clip(probs.reshape(C, -1), _PROB_FLOOR, 1.0)).astype(np.float32)
    crf = dcrf.DenseCRF2D(W, H, C)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=float(sxy_gauss), compat=float(compat_gauss))
    crf.addPairwiseBilateral(sxy=float(sxy_bilateral), srgb=float(srgb), rgbim=image,
                             compat=float(compat_bilateral))
    q = np.asarray(crf.inference(int(iters)), dtype=np.float32)  # (C, H*W) marginals
    return q.argmax(axis=0).reshape(H, W).astype(np.uint8)


def refine(image: np.ndarray, scores: Any, *, from_logits: bool = True, **crf_kwargs) -> np.ndarray:
    """Eval hook: CRF labels ``uint8 (H, W)`` for one image and its scores ``(C, H, W)``.

    ``scores`` are logits (``from_logits=True``, softmaxed here) or probabilities, as a
    numpy array or a torch tensor (any device). ``image`` is the original uint8 RGB
    (H, W, 3), not the normalised network input: crop padding off both first.
    """
    if hasattr(scores, "detach"):  # torch tensor, without importing torch here
        scores = scores.detach().float().cpu().numpy()
    scores = np.array(scores, dtype=np.float32, copy=True)  # softmax works in place
    probs = softmax(scores, axis=0) if from_logits else scores
    return dense_crf(image, probs, **crf_kwargs)
