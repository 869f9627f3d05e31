"""``fcnseg import pytorch-fcn``: wkentaro/pytorch-fcn's state dicts become fcnseg checkpoints
that give pytorch-fcn's logits and labels.

The reference below is an independent, functional re-implementation of pytorch-fcn's forward
passes (torchfcn/models/fcn32s.py, fcn16s.py, fcn8s.py incl. FCN8sAtOnce), with its own crops
(19; 5, 27; 5, 9, 31), run on its own input transform (torchfcn/datasets/voc.py: RGB -> BGR,
float, minus the mean pixel). Weights are random (not bilinear upsampling either), so a wrong
name, layout, crop or input convention changes the numbers.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcnseg
from fcnseg.cli import main
from fcnseg.checkpoint import load_checkpoint
from fcnseg.errors import CheckpointError

torch.set_num_threads(2)

MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])  # torchfcn/datasets/voc.py
CONVS = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
         ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
         ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
         ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)]
N = 21


@pytest.fixture(scope="module")
def trunk() -> dict[str, torch.Tensor]:
    """VGG16 conv1_1..fc7 in pytorch-fcn's names, random, scaled so that activations stay O(1)
    on a 0..255-range input (shared by the tests: VGG16 is 134M parameters)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i, (name, cin, cout) in enumerate(CONVS):
        gain = 2.0 / 128.0**2 if i == 0 else 2.0  # conv1_1 sees values of +-128
        sd[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (gain / (cin * 9)) ** 0.5
        sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.01
    sd["fc6.weight"] = torch.randn(4096, 512, 7, 7, generator=g) * (2.0 / (512 * 49)) ** 0.5
    sd["fc7.weight"] = torch.randn(4096, 4096, 1, 1, generator=g) * (2.0 / 4096) ** 0.5
    sd["fc6.bias"], sd["fc7.bias"] = torch.randn(4096, generator=g) * 0.01, torch.randn(4096, generator=g) * 0.01
    return sd


def make_state_dict(variant: str, trunk: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A pytorch-fcn FCN``variant`` state dict (its names and shapes): ``trunk`` + random heads.
    The upsampling kernels are random too (not bilinear): their layout is checked as well."""
    g = torch.Generator().manual_seed(seed)
    sd = dict(trunk)
    heads = {"32s": {"score_fr": 4096}, "16s": {"score_fr": 4096, "score_pool4": 512},
             "8s": {"score_fr": 4096, "score_pool4": 512, "score_pool3": 256}}[variant]
    for name, cin in heads.items():
        # large skip weights keep pool4*0.01 / pool3*1e-4 (FCN8sAtOnce) visible in the logits
        gain = 1.0 if name == "score_fr" else 1e2
        sd[f"{name}.weight"] = torch.randn(N, cin, 1, 1, generator=g) * (gain / cin) ** 0.5
        sd[f"{name}.bias"] = torch.randn(N, generator=g)
    ups = {"32s": {"upscore": 64}, "16s": {"upscore2": 4, "upscore16": 32},
           "8s": {"upscore2": 4, "upscore_pool4": 4, "upscore8": 16}}[variant]
    for name, k in ups.items():  # ConvTranspose2d(n, n, k, bias=False): weight (in, out, k, k)
        sd[f"{name}.weight"] = torch.rand(N, N, k, k, generator=g) * 2 / k**2
    return sd


def tiny(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same names with 1-element tensors (score_fr keeps its class count): for tests that
    never reach the weights."""
    return {k: torch.zeros(N, 1, 1, 1) if k == "score_fr.weight" else torch.zeros(1) for k in sd}


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, variant: str, at_once: bool) -> torch.Tensor:
    """pytorch-fcn's forward, written out: (B,3,H,W) BGR-minus-mean -> (B,21,H,W)."""
    h = x
    pools = {}
    for i, (name, _, _) in enumerate(CONVS):
        h = F.relu(F.conv2d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=100 if i == 0 else 1))
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            pools[name[:5]] = h
    h = F.relu(F.conv2d(h, sd["fc6.weight"], sd["fc6.bias"]))  # no padding: the 7x7 window
    h = F.relu(F.conv2d(h, sd["fc7.weight"], sd["fc7.bias"]))
    h = F.conv2d(h, sd["score_fr.weight"], sd["score_fr.bias"])
    H, W = x.shape[2:]
    if variant == "32s":
        h = F.conv_transpose2d(h, sd["upscore.weight"], stride=32)
        return h[:, :, 19:19 + H, 19:19 + W]
    up2 = F.conv_transpose2d(h, sd["upscore2.weight"], stride=2)
    p4 = pools["conv4"] * 0.01 if at_once else pools["conv4"]
    s4 = F.conv2d(p4, sd["score_pool4.weight"], sd["score_pool4.bias"])
    h = up2 + s4[:, :, 5:5 + up2.shape[2], 5:5 + up2.shape[3]]
    if variant == "16s":
        h = F.conv_transpose2d(h, sd["upscore16.weight"], stride=16)
        return h[:, :, 27:27 + H, 27:27 + W]
    up4 = F.conv_transpose2d(h, sd["upscore_pool4.weight"], stride=2)
    p3 = pools["conv3"] * 0.0001 if at_once else pools["conv3"]
    s3 = F.conv2d(p3, sd["score_pool3.weight"], sd["score_pool3.bias"])
    h = up4 + s3[:, :, 9:9 + up4.shape[2], 9:9 + up4.shape[3]]
    h = F.conv_transpose2d(h, sd["upscore8.weight"], stride=8)
    return h[:, :, 31:31 + H, 31:31 + W]


def pytorch_fcn_transform(rgb: np.ndarray) -> torch.Tensor:
    """torchfcn/datasets/voc.py transform: uint8 RGB (H,W,3) -> float (1,3,H,W) BGR minus mean."""
    img = rgb[:, :, ::-1].astype(np.float64) - MEAN_BGR
    return torch.from_numpy(img.transpose(2, 0, 1).copy()).float()[None]


def photo(h: int = 43, w: int = 57, seed: int = 0) -> np.ndarray:
    """A smooth 'photo' (uint8 RGB) with structure, so labels vary over the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([127 + 100 * np.sin(xx / (5 + 3 * c) + yy / (7 + c) + rng.uniform(0, 6)) for c in range(3)], -1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def agree(ref: torch.Tensor, ours: torch.Tensor) -> None:
    """Logits within 1e-4 of the logit range; labels equal wherever the reference's top-2 margin
    exceeds that tolerance (and >= 99.9% overall)."""
    tol = 1e-4 * (ref.max() - ref.min()).item()
    assert (ours - ref).abs().max().item() <= tol
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > tol
    same = ours.argmax(1) == ref.argmax(1)
    assert same[clear].all() and same.float().mean() >= 0.999
    assert len(ref.argmax(1).unique()) >= 2  # the comparison is not between constant maps


def standard_input(rgb: np.ndarray) -> torch.Tensor:
    """What fcnseg's datasets and segment() feed every model: RGB / 255, ImageNet mean/std."""
    x = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    return (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def test_import_fcn8s_end_to_end(trunk, tmp_path, capsys, monkeypatch):
    """fcn8s_from_caffe.pth-style file -> `fcnseg import` -> checkpoint -> load_model/segment
    give pytorch-fcn's logits and labels on the same RGB photo (7b)."""
    monkeypatch.setenv("FCNSEG_EAGER", "1")  # segment() on the module itself (the fast path is tested elsewhere)
    sd = make_state_dict("8s", trunk, seed=1)
    src = tmp_path / "fcn8s_from_caffe.pth"
    torch.save(sd, src)  # a bare state dict, as pytorch-fcn's converted files
    out = tmp_path / "out" / "model.pt"
    assert main(["import", "pytorch-fcn", str(src), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out

    ckpt = load_checkpoint(out)  # an ordinary fcnseg checkpoint
    assert ckpt["model"]["name"] == "fcn8s_vgg16" and ckpt["model"]["at_once"] is False
    assert ckpt["model"]["geometry"] == "caffe" and ckpt["model"]["input_convention"] == "caffe"
    assert ckpt["class_names"][15] == "person" and ckpt["imported_from"]["format"] == "pytorch-fcn"
    del ckpt
    model = fcnseg.load_model(out)
    rgb = photo()
    with torch.no_grad():
        ref = reference_forward(sd, pytorch_fcn_transform(rgb), "8s", at_once=False)
        ours = model(standard_input(rgb))  # the model converts the standard input to BGR - mean itself
    assert ref.shape == ours.shape == (1, N, *rgb.shape[:2])
    agree(ref, ours)
    labels = fcnseg.segment(model, rgb)
    top2 = ref.topk(2, dim=1).values[0]
    clear = ((top2[0] - top2[1]) > 1e-4 * (ref.max() - ref.min())).numpy()
    ref_labels = ref[0].argmax(0).numpy()
    assert labels.dtype == np.uint8 and labels.shape == rgb.shape[:2]
    assert (labels[clear] == ref_labels[clear]).all() and (labels == ref_labels).mean() >= 0.999


@pytest.mark.parametrize("arch", ["FCN32s", "FCN16s", "FCN8sAtOnce"])
def test_other_variants_match_pytorch_fcn(arch, trunk):
    from fcnseg.weights.pytorch_fcn import ARCHS, pytorch_fcn_model

    variant, at_once = ARCHS[arch]
    sd = make_state_dict(variant, trunk, seed=len(arch))
    model = pytorch_fcn_model(sd, arch)
    assert model.fcn_config["name"] == f"fcn{variant}_vgg16" and model.at_once is at_once
    rgb = photo(seed=len(arch))
    with torch.no_grad():
        ref = reference_forward(sd, pytorch_fcn_transform(rgb), variant, at_once)
        ours = model(standard_input(rgb))
        agree(ref, ours)
        if at_once:  # the scaling is not cosmetic: without it the logits differ
            plain = reference_forward(sd, pytorch_fcn_transform(rgb), variant, False)
            assert (plain - ours).abs().max() > 1e-2 * (ref.max() - ref.min())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("legacy", [False, True])
def test_trainer_checkpoints_are_read_safely(tmp_path, legacy):
    """torchfcn/trainer.py's checkpoint.pth.tar: model_state_dict, arch, a NumPy best_mean_iu,
    optimizer state; in the zip format and in the pre-1.6 one. Loaded with weights_only=True."""
    from fcnseg.weights.pytorch_fcn import detect, read_pytorch_fcn

    sd = {"conv1_1.weight": torch.randn(2, 3), "upscore8.weight": torch.randn(2, 2)}
    obj = {"epoch": 6, "iteration": 56000, "arch": "FCN8sAtOnce", "optim_state_dict": {"state": {}, "param_groups": [
        {"lr": 1e-10, "momentum": 0.99, "params": [0, 1]}]}, "model_state_dict": sd,
        "best_mean_iu": np.float64(0.6510)}
    torch.save(obj, tmp_path / "model_best.pth.tar", _use_new_zipfile_serialization=not legacy)
    got, arch = read_pytorch_fcn(tmp_path / "model_best.pth.tar")
    assert arch == "FCN8sAtOnce" and got.keys() == sd.keys()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert detect(got, arch, None, "f") == ("8s", True)
    # DataParallel prefixes are dropped; a bare dict has no arch: the names decide, and
    # pytorch-fcn's own fcn8s-atonce_from_caffe.pth is recognised by its name
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pth")
    got, arch = read_pytorch_fcn(tmp_path / "dp.pth")
    assert arch is None and set(got) == set(sd)
    assert detect(got, None, None, "f") == ("8s", False)
    assert detect(got, None, None, "f", filename="fcn8s-atonce_from_caffe.pth") == ("8s", True)
    assert detect(got, None, False, "f", filename="fcn8s-atonce_from_caffe.pth") == ("8s", False)
    assert detect({"upscore16.weight": None}, None, None, "f") == ("16s", False)
    with pytest.raises(CheckpointError, match="applies to FCN8s files only"):
        detect({"upscore.weight": None}, None, True, "f")
    with pytest.raises(CheckpointError, match="the file says arch FCN8s; drop --at-once"):
        detect(got, "FCN8s", True, "f")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the test's own evil pickle
def test_bad_files_give_one_clear_line(trunk, tmp_path, capsys):
    sd = tiny(make_state_dict("32s", trunk, seed=5))
    good = tmp_path / "fcn32s.pth"
    torch.save(sd, good)
    out = tmp_path / "model.pt"

    def run(path, *extra) -> str:
        assert main(["import", "pytorch-fcn", str(path), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    full = tmp_path / "full.pth"
    torch.save(make_state_dict("32s", {k: v[:1] for k, v in trunk.items()}, seed=5), full)
    (tmp_path / "trunc.pth").write_bytes(full.read_bytes()[:50_000])
    assert "trunc.pth: not a readable PyTorch file" in run(tmp_path / "trunc.pth")
    torch.save({k.replace("conv3_2", "conv3_x"): v for k, v in sd.items()}, tmp_path / "renamed.pth")
    err = run(tmp_path / "renamed.pth")
    assert "renamed.pth: layer names do not match pytorch-fcn's FCN32s" in err
    assert "missing: conv3_2.bias, conv3_2.weight" in err and "unexpected: conv3_x.bias" in err
    err = run(good)  # right names, wrong shapes (checked before any weights are allocated)
    assert "fcn32s.pth does not match fcn32s_vgg16" in err
    assert "shape mismatch(es): backbone.features.0.weight: file (1,) vs model (64, 3, 3, 3)" in err
    torch.save({"model_state_dict": sd, "arch": "FCN4s"}, tmp_path / "arch.pth")
    assert "arch 'FCN4s' is not one of pytorch-fcn's FCNs" in run(tmp_path / "arch.pth")
    torch.save({"epoch": 1}, tmp_path / "other.pth")
    assert "other.pth: not a pytorch-fcn checkpoint" in run(tmp_path / "other.pth")
    assert "no such file, and not a weights name" in run(tmp_path / "nope.pth")
    assert "is torchvision fcn_resnet50" in run("fcn_resnet50_coco")

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model_state_dict": sd, "arch": Evil()}, f)
    assert "refused to load" in run(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
    assert not out.exists()  # nothing written by any failed import
    # --out is never overwritten silently, and a failed import with --overwrite keeps it intact
    out.write_bytes(b"keep me")
    assert "already exists; pass --overwrite" in run(good)
    assert "layer names do not match" in run(tmp_path / "renamed.pth", "--overwrite")
    assert out.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.pt")] == []  # no temp files
