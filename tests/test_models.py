"""Model layer: registry, shapes for any input size, geometry, surgery, staged init, loading."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tv_reference as tv
from fcnseg.errors import CheckpointError
from fcnseg.models import (BACKBONES, build_model, convolutionalize, count_flops, count_params,
                           list_models, upgrade)
from fcnseg.models.geometry import CoordMap, bilinear_kernel

torch.set_num_threads(2)

# large backbones: fewer/smaller cases. EfficientNet-Lite1/2 are Lite0's code at other widths
# and depths (their layouts are checked against their weight files in test_efficientnet.py).
HEAVY = ("vgg16", "resnet50", "resnet34", "resnet101", "_dilated", "efficientnet_lite1", "efficientnet_lite2")
FCN_MODELS = list_models(family="fcn")  # FCN-32s/16s/8s heads: both geometries, crops, staged upgrade


def small_kwargs(name: str) -> dict:
    return {"width": 8} if name.endswith(("_small", "_classic")) else {}


def randomize_scores(model: torch.nn.Module, seed: int = 0) -> None:
    """Score layers start at zero; give them values so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("score"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# ----------------------------------------------------------------------------- registry

def test_registry_names():
    names = list_models()
    for variant in ("32s", "16s", "8s"):
        for arch in ("vgg16", "alexnet", "resnet18", "resnet34", "resnet50", "resnet101", "small",
                     "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
            assert f"fcn{variant}_{arch}" in names
    assert list_models(family="dilated") == ["fcn_resnet101_dilated", "fcn_resnet50_dilated"]
    unets = ("vgg16", "resnet18", "resnet34", "resnet50", "small", "efficientnet_lite0", "classic")
    assert list_models(family="unet") == sorted(f"unet_{a}" for a in unets)
    assert len(FCN_MODELS) == 30 and len(names) == 39


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean fcn8s_vgg16"):
        build_model("fcn8s_vgg61")


def test_unknown_backbone_option_is_named():
    with pytest.raises(TypeError, match="width"):
        build_model("fcn8s_vgg16", width=3)


def test_fcn_config_records_build_arguments():
    m = build_model("fcn16s_small", num_classes=5, geometry="caffe", width=8)
    assert m.fcn_config == {"name": "fcn16s_small", "num_classes": 5, "geometry": "caffe",
                            "upsampling": "paper", "at_once": False, "input_convention": "imagenet",
                            "width": 8}


# ----------------------------------------------------------------------------- every model

@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_model(name):
    """Forward shape, finite logits, backward reaches the backbone, tiny inputs."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, **small_kwargs(name))
    randomize_scores(model)
    model.train()
    h, w = (45, 61) if not name.endswith(HEAVY) else (37, 29)
    x = torch.randn(2, 3, h, w)
    y = model(x)
    assert y.shape == (2, 4, h, w)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    first_conv = next(p for n, p in model.backbone.named_parameters() if p.dim() == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        for size in ((1, 1), (2, 3), (7, 1)):
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 4, *size) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in FCN_MODELS if not n.endswith(HEAVY)])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 150), w=st.integers(1, 150), geometry=st.sampled_from(["modern", "caffe"]))
def test_output_size_equals_input_size_property(name, h, w, geometry):
    model = _cached(name, geometry)
    with torch.no_grad():
        y = model(torch.randn(1, 3, h, w))
    assert y.shape == (1, 3, h, w)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["fcn8s_vgg16", "fcn32s_resnet50", "fcn16s_resnet34", "fcn8s_efficientnet_lite2",
                                  "unet_vgg16", "unet_resnet50"])
@settings(max_examples=4, deadline=None)
@given(h=st.integers(1, 97), w=st.integers(1, 97), geometry=st.sampled_from(["modern", "caffe"]))
def test_output_size_property_heavy_backbones(name, h, w, geometry):
    model = _cached(name, geometry)
    with torch.no_grad():
        y = model(torch.randn(1, 3, h, w))
    assert y.shape == (1, 3, h, w)


_CACHE: dict = {}


def _cached(name: str, geometry: str):
    key = (name, geometry)
    if key not in _CACHE:
        torch.manual_seed(0)
        m = build_model(name, num_classes=3, geometry=geometry, **small_kwargs(name)).eval()
        randomize_scores(m)
        _CACHE.clear()  # keep at most one big model in memory
        _CACHE[key] = m
    return _CACHE[key]


# ----------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("variant,expected", [
    ("32s", {"upscore": 19}),
    ("16s", {"score_pool4": 5, "upscore16": 27}),
    ("8s", {"score_pool4": 5, "score_pool3": 9, "upscore8": 31}),
])
def test_caffe_crop_offsets_are_derived_and_match_reference(variant, expected):
    """The reference Caffe nets' offsets come out of the layer geometry, not a table."""
    with torch.device("meta"):
        model = build_model(f"fcn{variant}_vgg16", geometry="caffe")
    assert model.crop_offsets == expected
    assert model.misalignment == {}


def test_coord_map_algebra_by_hand():
    # VGG16 caffe: conv1_1 (k3, p100) then 4 more pool stages -> pool4 at x = 16u - 91.5
    with torch.device("meta"):
        bb = BACKBONES["vgg16"]("caffe")
    m = CoordMap().through(bb.coord_paths()["pool4"])
    assert (m.a, m.b) == (16, -91.5)
    m32 = CoordMap().through(bb.coord_paths()["fc7"])
    assert (m32.a, m32.b) == (32, 12.5)  # 32t - 83.5 through pool5, +3*32 through the 7x7 fc6


@pytest.mark.parametrize("geometry", ["modern", "caffe"])
@pytest.mark.parametrize("name", FCN_MODELS)
def test_every_backbone_and_geometry_is_exactly_aligned(name, geometry):
    """Integer offsets everywhere (kernel parity chosen from the maps), none hand-set."""
    with torch.device("meta"):
        model = build_model(name, geometry=geometry, **small_kwargs(name))
    assert model.misalignment == {}
    assert all(isinstance(v, int) for v in model.crop_offsets.values())


def test_modern_vgg16_offsets():
    with torch.device("meta"):
        model = build_model("fcn8s_vgg16")
    # pool4 grid is 16u + 7.5, unpadded upscore2 starts at 16o - 8.5: one cell before it
    assert model.crop_offsets == {"score_pool4": -1, "score_pool3": -3, "upscore8": 28}


def test_modern_geometry_saves_compute_over_caffe():
    m, c = (count_flops(build_model("fcn8s_vgg16", geometry=g), (500, 500)) for g in ("modern", "caffe"))
    assert m < c / 1.5  # pad 100 makes every layer work on (H+200)x(W+200)


def test_bilinear_kernel_upsamples_exactly():
    """A x2 transposed conv with the bilinear kernel reproduces linear functions in the interior."""
    w = bilinear_kernel(1, 4)
    assert torch.allclose(w[0, 0, 1:3, 1:3], torch.tensor([[0.5625, 0.5625], [0.5625, 0.5625]]))
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    up = torch.nn.functional.conv_transpose2d(ramp, w, stride=2, padding=1)  # (1,1,16,16)
    row = up[0, 0, 8]
    diffs = row[2:-2].diff()
    assert torch.allclose(diffs, torch.full_like(diffs, 0.5))  # slope 1 per input px = 0.5 per output px


def test_upsampling_switch_freezes_layers():
    m = build_model("fcn8s_small", width=8)  # paper: x2 learned, final fixed
    assert m.upscore2.weight.requires_grad and m.upscore_pool4.weight.requires_grad
    assert not m.upscore8.weight.requires_grad
    m = build_model("fcn8s_small", width=8, upsampling="fixed")
    assert not any(getattr(m, n).weight.requires_grad for n in ("upscore2", "upscore_pool4", "upscore8"))
    m = build_model("fcn8s_small", width=8, upsampling="learned")
    assert all(getattr(m, n).weight.requires_grad for n in ("upscore2", "upscore_pool4", "upscore8"))


def test_score_layers_start_at_zero():
    m = build_model("fcn8s_small", width=8)
    for n in ("score_fr", "score_pool4", "score_pool3"):
        layer = getattr(m, n)
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0


# ----------------------------------------------------------------------------- surgery

@pytest.fixture(scope="module")
def vgg_ref():
    torch.manual_seed(0)
    return tv.vgg16().eval()


def test_vgg16_fc7_equals_classifier_at_224(vgg_ref, tmp_path):
    """torchvision-layout weights load unchanged; convolutionalised fc7 == classifier's fc7."""
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(vgg_ref.state_dict(), path)  # as torchvision ships it
    model = build_model("fcn32s_vgg16", backbone_weights=path)  # no renaming by the user
    bb = BACKBONES["vgg16"]("classifier")
    bb.load_state_dict(model.backbone.state_dict())
    bb.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = bb(x)["fc7"]  # (2, 4096, 1, 1)
        ref = vgg_ref.fc7(x)  # (2, 4096)
    assert ours.shape == (2, 4096, 1, 1)
    assert (ours[:, :, 0, 0] - ref).abs().max() <= 1e-4
    assert ref.abs().max() > 1e-2  # the comparison is not between zeros


def test_vgg16_sliding_window_equivalence_at_384(vgg_ref):
    """On 384x384 the stride-32 map is 6x6 and each cell is the classifier at that window.

    fc6/fc7/fc8 as convs == the classifier's Linear layers applied to each 7x7 pool5 window
    (224 px at stride 32). Compared at pool5, where it is exact: at the pixel level,
    zero padding at a crop's border differs from the real neighbours the full image has.
    """
    conv = convolutionalize("vgg16", vgg_ref.state_dict())
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        scores = conv(x)  # (1, 1000, 6, 6)
        pool5 = vgg_ref.features(x)  # (1, 512, 12, 12), torchvision's own layers
        assert scores.shape == (1, 1000, 6, 6)
        worst = 0.0
        for i in range(6):
            for j in range(6):
                window = pool5[:, :, i:i + 7, j:j + 7]  # = pool5 of the crop x[32i:32i+224, 32j:32j+224]
                ref = vgg_ref.classifier(torch.flatten(window, 1))
                worst = max(worst, (scores[0, :, i, j] - ref[0]).abs().max().item())
        # and at 224 the whole pipeline from pixels agrees
        crop = x[:, :, 64:288, 96:320]
        full_pixels = (conv(crop)[0, :, 0, 0] - vgg_ref(crop)[0]).abs().max().item()
    assert worst <= 1e-4
    assert full_pixels <= 1e-4
    assert scores.std() > 1e-3


def test_alexnet_surgery_224_and_sliding(tmp_path):
    torch.manual_seed(1)
    ref = tv.alexnet().eval()
    torch.save(ref.state_dict(), tmp_path / "alexnet.pth")
    build_model("fcn8s_alexnet", backbone_weights=tmp_path / "alexnet.pth")  # loads unchanged
    conv = convolutionalize("alexnet", ref.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        assert (conv(x)[0, :, 0, 0] - ref(x)[0]).abs().max() <= 1e-4
        bb = conv.backbone
        assert (bb(x)["fc7"][:, :, 0, 0] - ref.fc7(x)).abs().max() <= 1e-4
        big = torch.randn(1, 3, 384, 384)
        scores = conv(big)
        pool5 = ref.features(big)  # (1, 256, 11, 11)
        assert scores.shape[-2:] == (6, 6)
        for i, j in ((0, 0), (2, 5), (5, 5)):
            cell = ref.classifier(torch.flatten(pool5[:, :, i:i + 6, j:j + 6], 1))[0]
            assert (scores[0, :, i, j] - cell).abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_resnet_weights_load_and_match(arch, tmp_path):
    torch.manual_seed(2)
    ref = getattr(tv, arch)().eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(ref.state_dict(), path)
    model = build_model(f"fcn8s_{arch}", backbone_weights=path).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = model.backbone(x)["layer4"]
        theirs = ref.body(x)
        assert (ours - theirs).abs().max() <= 1e-4
        conv = convolutionalize(arch, ref.state_dict())
        x224 = torch.randn(1, 3, 224, 224)
        assert (conv(x224)[0, :, 0, 0] - ref(x224)[0]).abs().max() <= 1e-4


def test_wrong_weights_file_says_which_keys_and_shapes(tmp_path):
    sd = tv.alexnet().state_dict()
    torch.save(sd, tmp_path / "alexnet.pth")
    with pytest.raises(CheckpointError) as e:
        build_model("fcn8s_vgg16", backbone_weights=tmp_path / "alexnet.pth")
    msg = str(e.value)
    assert "alexnet.pth" in msg and "does not match vgg16" in msg
    assert "shape mismatch" in msg and "features.0.weight" in msg
    assert "missing key" in msg


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the test's own pickle
def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"features.0.weight": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        build_model("fcn8s_small", width=8, backbone_weights=path)
    assert not marker.exists()


def test_weights_from_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = build_model("fcn8s_small", width=8)
    save_file({k: v.contiguous() for k, v in src.backbone.state_dict().items()}, tmp_path / "bb.safetensors")
    dst = build_model("fcn8s_small", width=8, backbone_weights=tmp_path / "bb.safetensors")
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(v, dst.backbone.state_dict()[k])


# ----------------------------------------------------------------------------- staged init

@pytest.mark.parametrize("geometry", ["modern", "caffe"])
@pytest.mark.parametrize("arch,kw", [("small", {"width": 8}), ("resnet18", {}), ("alexnet", {})])
def test_staged_upgrade_preserves_output(geometry, arch, kw):
    torch.manual_seed(4)
    m32 = build_model(f"fcn32s_{arch}", num_classes=5, geometry=geometry, **kw).eval()
    randomize_scores(m32, 1)
    m16 = upgrade(m32, "fcn16s").eval()
    assert m16.variant == "16s" and m16.fcn_config["name"] == f"fcn16s_{arch}"
    torch.testing.assert_close(m16.score_fr.weight, m32.score_fr.weight)
    sizes = ((64, 64), (75, 101), (33, 47))
    xs = [torch.randn(1, 3, h, w) for h, w in sizes]
    with torch.no_grad():
        for x in xs:  # at the moment of the copy: bilinear x2 then x16 == bilinear x32
            y32, y16 = m32(x), m16(x)
            assert y32.abs().max() > 1e-3
            assert (y16 - y32).abs().max() <= 1e-4 * y32.abs().max() + 1e-6, x.shape
    randomize_scores(m16, 2)  # as if FCN-16s had been trained: score_pool4 is non-zero now
    assert m16.score_pool4.weight.abs().sum() > 0
    m8 = upgrade(m16, "fcn8s").eval()
    with torch.no_grad():
        for x in xs:
            y16, y8 = m16(x), m8(x)
            assert (y8 - y16).abs().max() <= 1e-4 * y16.abs().max() + 1e-6, x.shape


@pytest.mark.parametrize("geometry", ["caffe", "modern"])
def test_staged_upgrade_vgg16(geometry):
    """VGG16's grids sit at pixel centres (2x2 pools): the pool4 grid falls at quarter cells
    of the fc7 grid, so the reference's bilinear x2 then x16 is a resampled x32, not x32
    itself. Measured: argmax identical, mean |diff| 2-5% of mean |logit|. Backbones whose
    grids contain the coarse samples are exact (test above)."""
    torch.manual_seed(5)
    m32 = build_model("fcn32s_vgg16", num_classes=3, geometry=geometry).eval()
    randomize_scores(m32)
    m16 = upgrade(m32, "16s").eval()
    m8 = upgrade(m16, "8s").eval()
    for name in ("backbone.fc7.weight", "score_fr.weight", "backbone.features.0.weight"):
        assert torch.equal(m8.state_dict()[name], m32.state_dict()[name])
    with torch.no_grad():
        x = torch.randn(1, 3, 96, 128)
        y32, y16, y8 = m32(x), m16(x), m8(x)
    for y in (y16, y8):
        assert (y.argmax(1) == y32.argmax(1)).float().mean() >= 0.99
        assert (y - y32).abs().mean() <= 0.06 * y32.abs().mean()


def test_upgrade_refuses_coarser():
    with pytest.raises(ValueError, match="finer"):
        upgrade(build_model("fcn8s_small", width=8), "16s")


# ----------------------------------------------------------------------------- counts

def test_params_and_flops_counts():
    m = build_model("fcn32s_vgg16")
    # VGG16 has 138,357,544 parameters; FCN-32s drops fc8 (4,097,000) and adds score_fr
    # (4096*21 + 21) and the 64x64 upscore (21*21*64*64, fixed).
    assert count_params(m) == 138_357_544 - 4_097_000 + (4096 * 21 + 21) + 21 * 21 * 64 * 64
    # conv FLOPs of VGG16 at 224 are 2 * 15.35 GMAC; fcn32s at 224 (modern) adds fc6/fc7 on 7x7
    gflops = count_flops(m, (224, 224)) / 1e9
    assert 2 * 15.3 + 2 * 49 * (25088 * 4096 + 4096 * 4096) / 1e9 < gflops < 2 * 15.6 + 2 * 49 * 1.2e8 / 1e9 + 3


def _conv(k: int, cin: int, cout: int, hout: int, wout: int) -> int:
    """FLOPs of a conv: 2 (multiply + add) per weight per output pixel (bias adds not counted)."""
    return 2 * k * k * cin * cout * hout * wout


def _upconv(k: int, cin: int, cout: int, hin: int, win: int) -> int:
    """FLOPs of a transposed conv: each INPUT pixel scatters a k x k kernel (cin x cout)."""
    return 2 * k * k * cin * cout * hin * win


# AlexNet at 224x224, worked out by hand from the layer definitions (C = 21 classes):
#   modern: conv1 11x11/4 pad 2: (224+4-11)//4+1 = 55; pool 3/2 ceil -> 27; conv2 5x5 pad 2: 27;
#           pool -> 13; conv3-5 3x3: 13; pool5 -> 6; fc6 6x6 pad 3: 6+6-6+1 = 7; fc7, score_fr: 7.
#   caffe:  conv1 pad 100: (224+200-11)//4+1 = 104; pool -> 52; conv2: 52; pool -> 26; conv3-5: 26;
#           pool5 -> 13; fc6 6x6 pad 0: 13-6+1 = 8; fc7, score_fr: 8.
#   The final bilinear upsampling (fixed) runs per class, as a grouped conv (cin 1 per group); the
#   x2 layers of FCN-8s are learned, hence dense (21 -> 21). Kernels are 2f-1 (63, 15, 3): the
#   AlexNet grid's samples sit on pixel corners (FCN._upsample_layer).
_ALEX_BODY = {
    "modern": [_conv(11, 3, 64, 55, 55), _conv(5, 64, 192, 27, 27), _conv(3, 192, 384, 13, 13),
               _conv(3, 384, 256, 13, 13), _conv(3, 256, 256, 13, 13), _conv(6, 256, 4096, 7, 7),
               _conv(1, 4096, 4096, 7, 7), _conv(1, 4096, 21, 7, 7)],
    "caffe": [_conv(11, 3, 64, 104, 104), _conv(5, 64, 192, 52, 52), _conv(3, 192, 384, 26, 26),
              _conv(3, 384, 256, 26, 26), _conv(3, 256, 256, 26, 26), _conv(6, 256, 4096, 8, 8),
              _conv(1, 4096, 4096, 8, 8), _conv(1, 4096, 21, 8, 8)],
}
HAND_FLOPS_224 = {
    ("fcn32s_alexnet", "modern"): sum(_ALEX_BODY["modern"]) + _upconv(63, 1, 21, 7, 7),
    ("fcn32s_alexnet", "caffe"): sum(_ALEX_BODY["caffe"]) + _upconv(63, 1, 21, 8, 8),
    # + upscore2 (7 -> 15), score_pool4 on conv5 (13x13), upscore_pool4 (15 -> 31), score_pool3 on
    #   conv2 (27x27), upscore8 per class over the 31x31 fused map
    ("fcn8s_alexnet", "modern"): sum(_ALEX_BODY["modern"]) + _upconv(3, 21, 21, 7, 7)
    + _conv(1, 256, 21, 13, 13) + _upconv(3, 21, 21, 15, 15) + _conv(1, 192, 21, 27, 27)
    + _upconv(15, 1, 21, 31, 31),
}
# parameters by hand: torchvision's AlexNet features (2,469,696) + fc6 (256*6*6*4096 + 4096) +
# fc7 (4096*4096 + 4096) + score_fr (4096*21 + 21) + the 63x63 upscore (21*21*63*63, fixed)
HAND_PARAMS_FCN32S_ALEXNET = 2_469_696 + 37_752_832 + 16_781_312 + 86_037 + 21 * 21 * 63 * 63


def test_models_command_prints_counted_table(capsys):
    """`fcnseg models` against counts worked out by hand from the layer shapes (above)."""
    from fcnseg.cli import main

    assert main(["models", "--models", "fcn32s_alexnet,fcn8s_alexnet", "--size", "224x224", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    for (name, geometry), flops in HAND_FLOPS_224.items():
        # integer sums in float64: exact up to ~1e-16 relative
        assert rows[name][f"gflops_{geometry}"] * 1e9 == pytest.approx(flops, rel=1e-12), (name, geometry)
    assert rows["fcn32s_alexnet"]["params_M"] * 1e6 == pytest.approx(HAND_PARAMS_FCN32S_ALEXNET, rel=1e-12)

    # the markdown table prints the same numbers, rounded to its 1 or 2 decimals
    assert main(["models", "--models", "fcn32s_alexnet,fcn8s_alexnet", "--size", "224x224"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| fcn")]
    assert [line.split("|")[1].strip() for line in lines] == ["fcn32s_alexnet", "fcn8s_alexnet"]
    cells = [c.strip() for c in lines[0].split("|")[1:-1]]
    modern, caffe = HAND_FLOPS_224[("fcn32s_alexnet", "modern")], HAND_FLOPS_224[("fcn32s_alexnet", "caffe")]
    assert cells[1:] == [f"{HAND_PARAMS_FCN32S_ALEXNET / 1e6:.1f}", f"{modern / 1e9:.1f}", f"{caffe / 1e9:.1f}",
                         f"{caffe / modern:.2f}x"]


def test_fixed_bilinear_layers_run_per_class_and_match_dense():
    """The grouped fast path for fixed diagonal upsampling equals the dense transposed conv."""
    torch.manual_seed(6)
    m = build_model("fcn8s_small", num_classes=7, width=8, upsampling="fixed").eval()
    randomize_scores(m)
    assert m._diagonal == {"upscore2", "upscore_pool4", "upscore8"}
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        fast = m(x)
        m._diagonal = set()  # force the dense path
        dense = m(x)
    torch.testing.assert_close(fast, dense, rtol=1e-5, atol=1e-6)
    # a loaded non-diagonal kernel must not take the per-class path
    sd = m.state_dict()
    sd["upscore8.weight"] = sd["upscore8.weight"] + 0.01
    m.load_state_dict(sd)
    assert "upscore8" not in m._diagonal
    seen = {}
    # the hook fires only if the dense layer runs (the per-class path calls F.conv_transpose2d)
    hook = m.upscore8.register_forward_hook(lambda _mod, inp, _out: seen.update(score=inp[0]))
    with torch.no_grad():
        out = m(x)
    hook.remove()
    # reference: the loaded (C, C, k, k) kernel applied densely to the fused stride-8 scores,
    # cropped as the forward does; the same float ops in the same order, hence bit-equal
    o = m.crop_offsets["upscore8"]
    ref = torch.nn.functional.conv_transpose2d(seen["score"], sd["upscore8.weight"], stride=8)
    assert torch.equal(out, ref[..., o:o + x.shape[2], o:o + x.shape[3]])
    m._diagonal = {"upscore8"}
    with torch.no_grad():
        wrong = m(x)
    assert (wrong - out).abs().max() > 1e-3  # the check above matters


@pytest.mark.parametrize("name", ["fcn8s_alexnet", "fcn8s_small"])
def test_channels_last_model_matches_contiguous(name):
    """--channels-last converts the weights too (fc6/fc7 GEMM path must cope); same logits."""
    torch.manual_seed(7)
    m = build_model(name, num_classes=4, **small_kwargs(name)).eval()
    randomize_scores(m)
    x = torch.randn(1, 3, 67, 91)
    with torch.no_grad():
        ref = m(x)
        m = m.to(memory_format=torch.channels_last)
        out = m(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    m.train()
    m(x.contiguous(memory_format=torch.channels_last)).sum().backward()  # trains in NHWC
