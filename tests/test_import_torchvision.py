"""torchvision's segmentation FCN as an fcnseg family (``fcn_resnet50_dilated``,
``fcn_resnet101_dilated``) and ``fcnseg import torchvision``.

The reference is tests/tv_reference.py's independent copy of torchvision's fcn_resnet50/101
(dilated ResNet via replace_stride_with_dilation, IntermediateLayerGetter, FCNHead, bilinear
upsampling), with random weights and BatchNorm statistics; its state dict has torchvision's
exact keys, as the published ``fcn_resnet50_coco-1167a1af.pth``.
"""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
import tv_reference as tv
from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.errors import CheckpointError
from fcnseg.models import build_model, upgrade

from _predict_utils import smooth_image, write_image

torch.set_num_threads(2)


def standard_input(rgb: np.ndarray) -> torch.Tensor:
    """torchvision's eval transform without resizing: ToTensor + Normalize(ImageNet mean/std)."""
    x = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    return (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def assert_same_logits_and_labels(ref: torch.Tensor, ours: torch.Tensor, varied: bool = True) -> None:
    """Logits within 1e-4 of the logit range, identical labels; ``varied``: and not a constant map."""
    tol = 1e-4 * (ref.max() - ref.min()).item()
    assert (ours - ref).abs().max().item() <= tol
    assert torch.equal(ours.argmax(1), ref.argmax(1))
    assert not varied or len(ref.argmax(1).unique()) >= 2


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """(reference model, its state dict file, the imported fcnseg checkpoint)."""
    torch.manual_seed(0)
    ref = tv.fcn_resnet(50, num_classes=21, aux_loss=True).eval()
    d = tmp_path_factory.mktemp("tv")
    src = d / "fcn_resnet50_coco.pth"
    torch.save(ref.state_dict(), src)  # as torchvision publishes it: a plain state dict
    out = d / "fcn_resnet50_voc.pt"
    assert main(["import", "torchvision", str(src), "--out", str(out)]) == 0
    return ref, src, out


def test_import_writes_an_ordinary_checkpoint(r50):
    _, _, out = r50
    ckpt = load_checkpoint(out)
    assert ckpt["model"] == {"name": "fcn_resnet50_dilated", "num_classes": 21, "geometry": "modern",
                             "upsampling": "paper", "at_once": False, "input_convention": "imagenet",
                             "aux": True}
    assert ckpt["class_names"][0] == "background" and ckpt["class_names"][20] == "tvmonitor"
    assert ckpt["palette"][15] == [192, 128, 128]  # VOC's colour for person
    assert ckpt["imported_from"] == {"format": "torchvision", "file": "fcn_resnet50_coco.pth",
                                     "arch": "fcn_resnet50"}
    assert set(ckpt["state_dict"]) == set(r50[0].state_dict())  # torchvision's names, no renaming


def test_imported_model_matches_torchvision(r50):
    """Logits equal torchvision's ``out`` (the aux head is loaded but unused), and
    fcnseg.segment on the RGB photo gives torchvision's labels (7b)."""
    ref, _, out = r50
    model = fcnseg.load_model(out)
    assert model.aux_classifier is not None
    rgb = smooth_image(45, 61, seed=4)
    x = standard_input(rgb)
    with torch.no_grad():
        want = ref(x)["out"]
        assert_same_logits_and_labels(want, model(x))
    labels = fcnseg.segment(model, rgb)  # the CPU fast path, from the uint8 RGB image
    assert labels.shape == rgb.shape[:2]
    assert (labels == want[0].argmax(0).numpy()).mean() >= 0.999
    with torch.no_grad():  # any size, including tiny and odd ones
        for h, w in ((1, 1), (7, 3), (33, 95)):
            x = torch.randn(1, 3, h, w)
            assert_same_logits_and_labels(ref(x)["out"], model(x), varied=min(h, w) >= 16)


def test_predict_and_models_table_use_the_family(r50, tmp_path, capsys):
    _, _, out = r50
    image = smooth_image(40, 52, seed=7)
    path = write_image(tmp_path / "in" / "photo.png", image)
    assert main(["predict", "--checkpoint", str(out), str(path), "--out", str(tmp_path / "pred")]) == 0
    seg = Image.open(tmp_path / "pred" / "photo.png")
    assert seg.mode == "P"
    np.testing.assert_array_equal(np.asarray(seg), fcnseg.segment(fcnseg.load_model(out), image))
    capsys.readouterr()
    assert main(["models", "--models", "fcn_resnet50_dilated,fcn8s_resnet50"]) == 0
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| fcn")}
    # parameters without the aux head: torchvision's 35,322,218 minus FCNHead(1024, 21)'s 2,365,205
    assert float(rows["fcn_resnet50_dilated"][1]) == pytest.approx(32.957, abs=0.05)
    assert rows["fcn_resnet50_dilated"][3:] == ["-", "-"]  # one geometry
    assert rows["fcn8s_resnet50"][3] != "-"


def test_export_onnx_checked(r50, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from fcnseg.export import export_onnx
    from fcnseg.infer.onnx_runner import OnnxModel

    _, _, out = r50
    report = export_onnx(out, tmp_path / "fcn_resnet50.onnx", opset=17)
    assert report.min_agreement >= 0.999  # checked against PyTorch on several sizes
    onnx_model = OnnxModel(tmp_path / "fcn_resnet50.onnx")
    image = smooth_image(37, 50, seed=9)
    assert (fcnseg.segment(onnx_model, image) == fcnseg.segment(fcnseg.load_model(out), image)).mean() >= 0.999


def test_resnet101_without_aux(tmp_path):
    torch.manual_seed(1)
    ref = tv.fcn_resnet(101, num_classes=5, aux_loss=False).eval()
    torch.save({"model": ref.state_dict()}, tmp_path / "r101.pth")  # wrapped, as reference scripts do
    from fcnseg.weights.torchvision_fcn import import_torchvision_fcn

    model = import_torchvision_fcn(tmp_path / "r101.pth", tmp_path / "r101.pt")
    assert model.fcn_config["name"] == "fcn_resnet101_dilated" and model.aux_classifier is None
    assert "class_names" not in load_checkpoint(tmp_path / "r101.pt")  # not VOC: defaults apply
    x = torch.randn(1, 3, 29, 35)
    with torch.no_grad():
        assert_same_logits_and_labels(ref(x)["out"], model(x))


def test_family_refuses_fcn_only_options():
    with pytest.raises(ValueError, match="single geometry"):
        build_model("fcn_resnet50_dilated", geometry="caffe")
    with pytest.raises(ValueError, match="FCN-32s/16s/8s models only"):
        build_model("fcn_resnet50_dilated", at_once=True)
    with pytest.raises(TypeError, match="unknown option"):
        build_model("fcn_resnet50_dilated", width=8)
    with torch.device("meta"):
        m = build_model("fcn_resnet50_dilated")
    with pytest.raises(ValueError, match="staged upgrade .*needs an FCN; fcn_resnet50_dilated is not one"):
        upgrade(m, "8s")


def test_imagenet_backbone_loads_into_the_dilated_family(tmp_path):
    """--backbone-weights works for the family too: torchvision's resnet50 classifier file."""
    torch.manual_seed(2)
    cls = tv.resnet50()
    torch.save(cls.state_dict(), tmp_path / "resnet50.pth")
    model = build_model("fcn_resnet50_dilated", backbone_weights=tmp_path / "resnet50.pth")
    for k, v in cls.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.backbone.state_dict()[k], v), k


def test_one_command_from_a_name(tmp_path, monkeypatch, capsys):
    """`fcnseg import torchvision NAME` downloads the catalog's file (here from a local server,
    into torch hub's cache) and converts it: a VOC segmenter in one command."""
    from test_weights_catalog import WeightsServer

    from fcnseg.weights import catalog, hub
    from fcnseg.weights.catalog import WeightSpec, register_weights

    torch.manual_seed(3)
    ref = tv.fcn_resnet(50, num_classes=21, aux_loss=True).eval()
    buf = __import__("io").BytesIO()
    torch.save(ref.state_dict(), buf)
    data = buf.getvalue()
    filename = f"fcn_resnet50_test-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server = WeightsServer()
    server.files[filename] = data
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FCNSEG_WEIGHTS_BASE_URL", server.base)
    register_weights(WeightSpec(name="fcn_resnet50_test", filename=filename, kind="torchvision",
                                arch="fcn_resnet50_dilated", description="test", url=None, size="-",
                                input_convention="imagenet", accuracy="-", source="-", use="-"))
    try:
        out = tmp_path / "voc.pt"
        assert main(["import", "torchvision", "fcn_resnet50_test", "--out", str(out)]) == 0
        assert server.requests == [f"/{filename}"]
        assert (hub.cache_dir() / filename).is_file()
        model = fcnseg.load_model(out)
        x = torch.randn(1, 3, 24, 40)
        with torch.no_grad():
            assert_same_logits_and_labels(ref(x)["out"], model(x))
    finally:
        catalog.WEIGHTS.pop("fcn_resnet50_test", None)
        server.close()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the test's own evil pickle
def test_bad_files_give_one_clear_line(r50, tmp_path, capsys):
    ref, src, _ = r50
    out = tmp_path / "model.pt"

    def run(path) -> str:
        assert main(["import", "torchvision", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    (tmp_path / "trunc.pth").write_bytes(src.read_bytes()[:300_000])
    assert "trunc.pth: not a readable PyTorch file" in run(tmp_path / "trunc.pth")
    sd = ref.state_dict()
    torch.save({"classifier.0.convs.0.0.weight": torch.zeros(1), **{k: v for k, v in sd.items()
                                                                      if not k.startswith("classifier")}},
               tmp_path / "deeplab.pth")
    assert "DeepLabV3 checkpoint" in run(tmp_path / "deeplab.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "vgg.pth")
    assert "not a torchvision fcn_resnet50/101 state dict" in run(tmp_path / "vgg.pth")
    broken = {k: v for k, v in sd.items() if k != "backbone.layer2.0.bn1.running_var"}
    broken["classifier.0.weight"] = torch.zeros(512, 2048, 1, 1)
    torch.save(broken, tmp_path / "broken.pth")
    err = run(tmp_path / "broken.pth")
    assert "broken.pth does not match fcn_resnet50_dilated" in err
    assert "classifier.0.weight: file (512, 2048, 1, 1) vs model (512, 2048, 3, 3)" in err
    assert "missing key(s): backbone.layer2.0.bn1.running_var" in err
    with open(tmp_path / "args.pth", "wb") as f:  # torchvision's reference scripts pickle argparse args
        pickle.dump({"model": {}, "args": __import__("argparse").Namespace(lr=0.01)}, f)
    assert "refused to load" in run(tmp_path / "args.pth")
    assert "use it with: fcnseg import pytorch-fcn" in run("pytorch_fcn8s")
    assert not out.exists()
