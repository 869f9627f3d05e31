"""Regression tests for the CPU fast path's defects (issue #11, point 5).

(a) channels-last VGG16/AlexNet: fc6 became a GemmConv2d and the backbone's conv_as_gemm asked
    it for ``kernel_size`` (AttributeError); the same when the unfolded fc6 input passed the
    size limit (large inputs). Every backbone family is checked against eager at several sizes.
(b)/(d) the prepared runner is cached per model and keyed to its weights (tests/test_precision.py
    checks the cache; here: a prepared copy refuses to run once its source changed).
(c) FCN's per-class upsampling kernels follow in-place edits of the frozen upsampling weights.
"""
from __future__ import annotations

import pytest
import torch

import fcnseg.models.backbones.base as base
import fcnseg.models.fastpath as fp
from fcnseg import bench
from fcnseg.models import build_model
from fcnseg.models.fastpath import optimize_for_cpu_inference

# Reordered float32 sums only (oneDNN blocking, GEMM bands): the bound of tests/test_bench.py's
# measurement (max 2.4e-6 x max(1, max |eager|) over the backbones), with room for deeper nets.
FP32_RTOL = 5e-6
SIZES = [(64, 64), (37, 83), (9, 13)]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check_against_eager(model, sizes, channels_last: bool) -> None:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast = optimize_for_cpu_inference(model, (64, 64))
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for h, w in sizes:
            x = torch.randn(1, 3, h, w, generator=gen)
            ref, out = model(x), fast(x).float()
            assert out.shape == ref.shape == (1, model.num_classes, h, w)
            err = float((out - ref).abs().max())
            assert err <= FP32_RTOL * max(1.0, float(ref.abs().max())), f"{h}x{w}: {err:.3g}"
            assert torch.equal(out.argmax(1), ref.argmax(1))


# One model per backbone family and head kind; VGG16 with 1024-wide fc6/fc7 (still >= the
# GEMM threshold, so fc6 becomes a GemmConv2d, at a quarter of the memory).
FAMILIES = [
    ("fcn8s_vgg16", {"fc_width": 1024}), ("fcn32s_alexnet", {}), ("fcn8s_small", {"width": 8}),
    ("fcn16s_resnet18", {}), ("fcn8s_resnet50", {}), ("fcn8s_efficientnet_lite0", {}),
    ("fcn_resnet50_dilated", {}), ("unet_small", {"width": 8}), ("unet_resnet18", {}),
    ("unet_efficientnet_lite0", {}), ("unet_classic", {}),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name,kwargs", FAMILIES, ids=[n for n, _ in FAMILIES])
def test_fast_path_matches_eager_on_every_backbone(name, kwargs, channels_last):
    torch.manual_seed(0)
    model = build_model(name, 5, **kwargs).eval()  # each model's own default geometry
    for m in model.modules():
        if type(m) is torch.nn.Conv2d:  # He init: zero score layers would make logits all zero
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    model.num_classes = 5
    _check_against_eager(model, SIZES, channels_last)


@pytest.mark.parametrize("name,kwargs", [("fcn8s_vgg16", {"fc_width": 1024}), ("fcn8s_alexnet", {})])
def test_classifier_fc6_past_the_unfold_limit_runs_as_banded_gemm(monkeypatch, name, kwargs):
    """What a large input does (e.g. 2048x2048: fc6's unfolded input > 256 MB): conv_as_gemm falls
    back to calling fc6 itself, which the fast path has replaced by a GemmConv2d working in bands.
    The limits are lowered here so a small input takes that route."""
    monkeypatch.setattr(base, "_GEMM_MAX_COLS_BYTES", 1)
    monkeypatch.setattr(fp, "GEMM_BAND_BYTES", 4096)
    model = bench.random_model(name, 5, **kwargs)
    model.num_classes = 5
    fast = optimize_for_cpu_inference(model, (64, 64))
    assert type(fast.inner.backbone.fc6) is fp.GemmConv2d
    _check_against_eager(model, [(70, 90), (40, 56)], channels_last=False)


@pytest.mark.slow
def test_vgg16_fast_path_at_2048x2048_matches_eager():
    """The real thing: full VGG16 (4096-wide fc6, 411 MB) on a 2048x2048 input, NHWC model."""
    model = bench.random_model("fcn8s_vgg16", 3)
    model.num_classes = 3
    _check_against_eager(model, [(2048, 2048)], channels_last=True)


def _fixed_fcn(seed: int = 0):
    torch.manual_seed(seed)
    m = bench.random_model("fcn8s_small", 4, "caffe", width=8, upsampling="fixed")
    m.num_classes = 4
    return m


def _fresh_copy(model):
    """An independent model given the same weights through load_state_dict (which refreshes)."""
    twin = build_model("fcn8s_small", 4, geometry="caffe", width=8, upsampling="fixed").eval()
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.parametrize("layer", ["upscore2", "upscore_pool4", "upscore8"])
def test_in_place_edit_of_a_fixed_upsampling_weight_is_used(layer):
    m = _fixed_fcn()
    x = torch.randn(1, 3, 45, 67, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = m(x)
        w = getattr(m, layer).weight
        diag = torch.zeros_like(w)
        idx = torch.arange(w.shape[0])
        diag[idx, idx] = torch.rand(w.shape[0], *w.shape[2:], generator=torch.Generator().manual_seed(2))
        w.copy_(diag)  # still per-class (diagonal), new values: weight surgery's in-place copy
        after = m(x)
        ref = _fresh_copy(m)(x)
    assert (after - before).abs().max() > 1e-3  # the edit matters
    assert layer in m._diagonal
    torch.testing.assert_close(after, ref, rtol=0, atol=0)  # same ops on the same weights
    # a non-diagonal in-place edit must leave the per-class path, again matching a fresh load
    with torch.no_grad():
        w.add_(0.01)
        dense = m(x)
        ref = _fresh_copy(m)(x)
    assert layer not in m._diagonal
    torch.testing.assert_close(dense, ref, rtol=0, atol=0)


def test_kernels_refreshed_under_inference_mode_still_train():
    """An edit noticed first by an evaluation (inference_mode) must not leave inference tensors
    behind: the next training step saves the per-class kernel for backward."""
    m = _fixed_fcn()
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        m.upscore8.weight.mul_(0.5)
    with torch.inference_mode():
        m(x)  # refreshes the cache here
    assert not m._upscore8_per_class.is_inference()
    m.train()
    m(x).square().mean().backward()
    assert m.score_fr.weight.grad is not None and torch.isfinite(m.score_fr.weight.grad).all()


def test_in_place_upsampling_edit_matches_the_dense_transposed_conv():
    """Independent reference: the layer's own dense (C, C, k, k) ``nn.ConvTranspose2d`` (the path a
    learnable layer takes, which reads the weight directly and never the per-class cache)."""
    m = _fixed_fcn()
    x = torch.randn(1, 3, 45, 67, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        stale = m(x)  # caches the per-class kernels of the initial weights
        k = m.upscore8.weight
        k.mul_(torch.linspace(0.5, 2.0, k.shape[0]).view(-1, 1, 1, 1))  # per-class gains, in place
        out = m(x)
    ran = []
    hook = m.upscore8.register_forward_hook(lambda *_: ran.append(1))
    m.upscore8.weight.requires_grad_(True)  # learnable layers run densely
    with torch.no_grad():
        ref = m(x)
    m.upscore8.weight.requires_grad_(False)
    hook.remove()
    assert ran == [1]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (stale - ref).abs().max() > 1e-2  # what the stale cache gave: visibly wrong


def test_prepared_copy_refuses_to_run_after_its_source_changed():
    m = bench.random_model("fcn8s_small", 3, width=8)
    fast = optimize_for_cpu_inference(m, (32, 32))
    x = torch.randn(1, 3, 32, 48)
    with torch.inference_mode():
        fast(x)
    assert not fast.is_stale()
    with torch.no_grad():
        next(m.backbone.parameters()).mul_(2.0)  # its PackedConv2d holds a copy of the old values
    assert fast.is_stale()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="weights changed"):
        fast(x)
    fresh = optimize_for_cpu_inference(m, (32, 32))
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x).float(), m(x), rtol=1e-5, atol=1e-5)
