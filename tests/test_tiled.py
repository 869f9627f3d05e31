"""Tiled inference: tile grid, blending window, exactness, agreement with whole-image
inference, and bounded memory on an 8000 x 8000 image."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcnseg.errors import ConfigError
from fcnseg.infer.segment import (AUTO_TILE, AUTO_TILE_PIXELS, predict_logits, predict_tiled,
                                  resolve_tiling, segment_array, tile_grid, window_1d)

from _predict_utils import smooth_image, tiny_model


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 3000), tile=st.integers(64, 1100), overlap_frac=st.floats(0, 0.6))
def test_tile_grid_covers_aligned_and_overlapping(n, tile, overlap_frac):
    overlap = int(tile * overlap_frac)
    if (tile - overlap) // 32 * 32 < 32:
        if n > tile:
            with pytest.raises(ConfigError):
                tile_grid(n, tile, overlap)
        return
    grid = tile_grid(n, tile, overlap)
    assert grid[0][0] == 0 and grid[-1][0] + grid[-1][1] == n  # covers [0, n)
    for (s0, l0), (s1, l1) in zip(grid, grid[1:]):
        assert s1 > s0                      # strictly advancing
        assert s0 + l0 - s1 >= overlap      # neighbours overlap enough
    for s, length in grid:
        assert s % 32 == 0                  # same pooling phase as the whole image
        assert 1 <= length <= max(n, 0) and length <= tile + 31


def test_window_is_positive_and_complementary():
    w = window_1d(256, 64, 64)
    assert w.dtype == np.float32 and w.shape == (256,)
    assert (w > 0).all() and (w <= 1).all()
    assert np.allclose(w[64:192], 1.0)
    # A ramp and its mirror image sum to ~1: no seams where two tiles blend.
    assert np.allclose(w[:64] + w[:64][::-1], 1.0, atol=2e-3)
    assert np.allclose(window_1d(100, 0, 0), 1.0)  # image borders: no ramp


class PointwiseRunner:
    """A runner with no spatial context (per-pixel linear map): tiling must be exact."""

    is_fcnseg_runner = True

    def __init__(self, num_classes: int = 7, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.num_classes = num_classes
        self.weight = rng.normal(size=(num_classes, 3)).astype(np.float32) * 3
        self.bias = rng.normal(size=(num_classes, 1, 1)).astype(np.float32)
        self.calls = 0

    def __call__(self, x):  # (B, 3, h, w) -> (B, C, h, w)
        self.calls += 1
        return np.einsum("cd,bdhw->bchw", self.weight, x) + self.bias


@pytest.mark.parametrize("size", [(301, 517), (97, 64), (1, 1), (333, 96)])
def test_tiled_is_exact_without_spatial_context(size):
    """With a context-free model, band-wise blending must reproduce whole-image results exactly
    (checks the band buffer shifting and normalisation on multi-band, multi-column grids)."""
    runner = PointwiseRunner()
    image = smooth_image(*size, seed=1)
    logits = predict_logits(runner, image)
    labels, probs = predict_tiled(runner, image, tile=96, overlap=40, return_probs=True)
    assert labels.shape == size and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, logits.argmax(0))
    e = np.exp(logits - logits.max(0))
    np.testing.assert_allclose(probs, e / e.sum(0), atol=1e-5)
    assert probs.shape == (7, *size) and probs.dtype == np.float32
    q = predict_tiled(runner, image, tile=96, overlap=40, return_probs=True, probs_dtype=np.uint8)[1]
    assert q.dtype == np.uint8 and np.abs(q.astype(np.float32) / 255 - probs).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("geometry,size,seed", [("modern", (600, 800), 0), ("modern", (717, 1003), 1),
                                                ("caffe", (650, 901), 2)])
def test_tiled_agrees_with_whole_image(geometry, size, seed):
    """A real FCN (random weights; zero padding at tile borders perturbs logits up to ~128 px
    inwards): tiles of 512 px with 256 px overlap reproduce >= 99.5% of whole-image labels."""
    import torch

    torch.set_num_threads(2)
    model = tiny_model(21, geometry, seed=seed)
    image = smooth_image(*size, seed=seed)
    whole = predict_logits(model, image).argmax(0)
    assert len(np.unique(whole)) >= 4  # non-trivial predictions
    tiled = predict_tiled(model, image, tile=512, overlap=256)
    agreement = float((tiled == whole).mean())
    print(f"{geometry} {size}: tiled/whole agreement {100 * agreement:.3f}%")
    assert agreement >= 0.995


def test_resolve_tiling_auto_and_defaults():
    assert resolve_tiling(None, None, (10_000, 10_000)) is None
    assert resolve_tiling("auto", None, (100, 100)) is None
    side = int(AUTO_TILE_PIXELS ** 0.5) + 1
    tile, overlap = resolve_tiling("auto", None, (side, side))
    assert tile == AUTO_TILE and 0 < overlap < tile
    assert resolve_tiling(512, None, (10, 10)) == (512, 128)
    with pytest.raises(ConfigError):
        resolve_tiling(128, 128, (500, 500))


def test_segment_array_auto_tiles_large_images(monkeypatch):
    import fcnseg.infer.segment as inf

    runner = PointwiseRunner()
    image = smooth_image(300, 200)
    monkeypatch.setattr(inf, "AUTO_TILE_PIXELS", 100 * 100)
    monkeypatch.setattr(inf, "AUTO_TILE", 128)
    monkeypatch.setattr(inf, "AUTO_OVERLAP", 32)
    labels = segment_array(runner, image, tile="auto")
    assert runner.calls > 1  # it really tiled
    np.testing.assert_array_equal(labels, predict_logits(runner, image).argmax(0))


_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, time
    import numpy as np, torch
    import torch.nn.functional as F
    from torch import nn
    from fcnseg.infer.segment import predict_tiled

    torch.set_num_threads(2)

    class Tiny(nn.Module):
        # 21-class FCN-like net: two strided convs to 1/8 resolution, bilinear back up.
        num_classes = 21
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, stride=4, padding=1)
            self.b = nn.Conv2d(8, 21, 3, stride=2, padding=1)
        def forward(self, x):
            y = self.b(torch.relu(self.a(x)))
            return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    torch.manual_seed(0)
    H = W = 8000
    image = np.empty((H, W, 3), np.uint8)
    image[..., 0] = (np.arange(W) % 256).astype(np.uint8)[None]
    image[..., 1] = (np.arange(H) % 251).astype(np.uint8)[:, None]
    image[..., 2] = 128
    t = time.time()
    labels = predict_tiled(Tiny().eval(), image, tile=1024, overlap=128)
    seconds = time.time() - t
    # VmHWM: this process's own peak. ru_maxrss would also count the parent's RSS at fork time
    # (Linux keeps it across exec), i.e. whatever the test runner held then.
    peak_kib = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
    print(json.dumps({"peak_mib": peak_kib / 1024, "seconds": seconds, "shape": labels.shape,
                      "dtype": str(labels.dtype), "classes": int(len(np.unique(labels[::97, ::97])))}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")
def test_8000x8000_within_4gib_peak_rss():
    """Full-size 21-class float32 logits alone would take 5.4 GB; the band algorithm must
    segment an 8000 x 8000 image with a peak RSS (image, torch, everything) under 4 GiB."""
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"8000x8000 tiled: peak RSS {result['peak_mib']:.0f} MiB, {result['seconds']:.1f} s")
    assert result["shape"] == [8000, 8000] and result["dtype"] == "uint8"
    assert result["classes"] >= 2
    assert result["peak_mib"] < 4 * 1024
