"""``fcnseg import caffe`` against an independent oracle: OpenCV's own Caffe reader.

The tests write the reference deploy prototxts (tests/caffe_reference.py: the published layer
geometry, real VGG16 conv widths, fc6/fc7 narrowed to FC channels) and caffemodels with random
weights; ``cv2.dnn.readNetFromCaffe`` runs them on the image as Caffe wants it (BGR, 0-255,
minus the mean), fcnseg runs the imported checkpoint on the standard RGB ImageNet input (the
checkpoint's input convention does the rest). Nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("google.protobuf")
cv2 = pytest.importorskip("cv2")

import fcnseg  # noqa: E402
from fcnseg.cli import main  # noqa: E402
from fcnseg.constants import VOC_CLASSES  # noqa: E402
from fcnseg.data.image_files import default_palette, read_mask  # noqa: E402
from fcnseg.errors import CheckpointError, ConfigError  # noqa: E402
from fcnseg.infer.arrays import normalize  # noqa: E402

import caffe_reference as ref  # noqa: E402
from _predict_utils import smooth_image, write_image  # noqa: E402

H, W = 37, 53  # odd, not multiples of 32: every crop offset matters
FC = 64        # fc6/fc7 width here (4096 in the real nets: fc6 alone would be 411 MB of random weights)

# case -> how its weights differ from the published nets (None: as published)
CASES = {
    "fcn32s-heavy": dict(variant="32s"),
    "fcn16s-heavy": dict(variant="16s"),
    "fcn8s-heavy": dict(variant="8s"),
    "fcn8s-atonce": dict(variant="8s", at_once=True),
    # Not published, but files of these forms must import exactly too: learned (random, not
    # symmetric) x2 upsampling checks the Deconvolution weight layout; per-channel Scale layers
    # are folded into the score layers; a per-class (group: 21) Deconvolution is expanded.
    "fcn16s-learned-x2": dict(variant="16s", random_deconv=("upscore2",)),
    "fcn8s-atonce-variations": dict(variant="8s", at_once=True, per_channel_scale=True,
                                    random_deconv=("upscore2", "upscore_pool4", "upscore8"),
                                    deconv_group={"upscore_pool4": 21}),
}
UPSAMPLING = {"fcn16s-learned-x2": "paper", "fcn8s-atonce-variations": "learned"}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


class Nets:
    """Writes each case's prototxt and caffemodel once, and runs OpenCV on them once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.convs = ref.vgg16_conv_weights(np.random.default_rng(0))  # shared by every case
        self.image = smooth_image(H, W, seed=5)
        self.image_path = write_image(root / "photo.png", self.image)
        self._cache: dict[str, tuple[Path, Path, np.ndarray]] = {}

    def get(self, case: str) -> tuple[Path, Path, np.ndarray]:
        """(prototxt, caffemodel, OpenCV logits (1, 21, H, W))."""
        if case not in self._cache:
            spec = dict(CASES[case])
            variant, at_once, group = spec.pop("variant"), spec.pop("at_once", False), spec.get("deconv_group")
            proto = self.root / f"{case}.prototxt"
            proto.write_text(ref.fcn_deploy_prototxt(variant, at_once=at_once, fc_width=FC, deconv_group=group))
            rng = np.random.default_rng(1 + list(CASES).index(case))  # the same whatever ran before
            weights = ref.fcn_weights(variant, rng, at_once=at_once, fc_width=FC, convs=self.convs, **spec)
            model = ref.write_caffemodel(proto, self.root / f"{case}.caffemodel", weights)
            self._cache[case] = (proto, model, ref.opencv_forward(proto, model, self.image))
        return self._cache[case]


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Nets:
    return Nets(tmp_path_factory.mktemp("caffe"))


def assert_matches(logits: np.ndarray, oracle: np.ndarray, what: str) -> None:
    """max |diff| <= 1e-3 of the logit range and argmax agreement >= 99.9%."""
    assert logits.shape == oracle.shape, what
    span = float(oracle.max() - oracle.min())
    assert span > 1.0, f"{what}: degenerate oracle logits"
    diff = float(np.abs(logits - oracle).max())
    agree = float((logits.argmax(1) == oracle.argmax(1)).mean())
    assert diff <= 1e-3 * span, f"{what}: max |diff| {diff:.3g} > 1e-3 * range {span:.3g}"
    assert agree >= 0.999, f"{what}: argmax agreement {agree:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_imported_model_matches_opencv(nets, tmp_path, case):
    proto, caffemodel, oracle = nets.get(case)
    ckpt = tmp_path / f"{case}.pt"
    # half the cases name the prototxt; the others infer the variant from the caffemodel's layers
    extra = ["--prototxt", str(proto)] if list(CASES).index(case) % 2 else []
    rc, out, err = run_cli(["import", "caffe", "--caffemodel", str(caffemodel), *extra, "--out", str(ckpt)])
    assert rc == 0, err
    assert "input convention caffe" in out
    spec = CASES[case]
    # an ordinary fcnseg checkpoint: load_model reads it, with VOC names and palette
    model = fcnseg.load_model(ckpt)
    cfg = model.fcn_config
    assert cfg["name"] == f"fcn{spec['variant']}_vgg16" and cfg["num_classes"] == 21
    assert cfg["geometry"] == "caffe" and cfg["input_convention"] == "caffe"
    assert cfg["at_once"] == spec.get("at_once", False)
    assert cfg["upsampling"] == UPSAMPLING.get(case, "fixed")
    assert model.class_names == VOC_CLASSES and model.palette == default_palette(21)
    # logits on the standard input (RGB, ImageNet-normalised) = OpenCV's on Caffe's input
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(nets.image))).numpy()
    assert_matches(logits, oracle, case)
    # 7b: fcnseg.segment on the photo gives the source implementation's labels
    labels = fcnseg.segment(model, nets.image_path)
    assert (labels == oracle[0].argmax(0)).mean() >= 0.999
    if case == "fcn8s-heavy":
        # The test can fail: the same weights fed the standard input unconverted disagree.
        model.prepare_input = torch.nn.Identity()
        with torch.no_grad():
            wrong = model(torch.from_numpy(normalize(nets.image))).numpy()
        assert np.abs(wrong - oracle).max() > 0.1 * (oracle.max() - oracle.min())


@pytest.mark.slow
def test_vgg16_v1_caffemodel_becomes_backbone_weights(tmp_path, capsys):
    """The paper's VGG16 (V1 format, legacy 4-D blob dims, fc6 InnerProduct 4096x25088 here
    FCx25088): fcnseg's fc7 features equal OpenCV's; the file carries the caffe convention."""
    rng = np.random.default_rng(1)
    proto = tmp_path / "VGG_ILSVRC_16_layers_deploy.prototxt"
    proto.write_text(ref.vgg16_v1_prototxt(fc_width=FC, num_outputs=10))
    weights = ref.vgg16_classifier_weights(rng, FC, 10)
    caffemodel = ref.write_caffemodel(proto, tmp_path / "VGG_ILSVRC_16_layers.caffemodel", weights,
                                      legacy_shapes=True)
    image = smooth_image(224, 224, seed=7)  # the classifier's own input size: fc6 sees exactly 7x7
    # OpenCV: fc7 after its ReLU (fusion off, so the relu7 layer's output is its own)
    oracle = ref.opencv_forward(proto, caffemodel, image, output="relu7", fusion=False).reshape(-1)

    out = tmp_path / "vgg16_caffe.pt"
    rc, stdout, err = run_cli(["import", "caffe", "--caffemodel", str(caffemodel), "--prototxt", str(proto),
                               "--backbone", "vgg16", "--out", str(out)])
    assert rc == 0, err
    saved = torch.load(out, weights_only=True)
    assert saved["format"] == "fcnseg-backbone" and saved["input_convention"] == "caffe"
    assert saved["source"]["ignored_layers"] == ["fc8"]
    assert saved["state_dict"]["fc6.weight"].shape == (FC, 512, 7, 7)

    # build_model picks the convention up from the file; the modern geometry's fc6 (pad 3) at
    # the centre of the 7x7 map covers exactly pool5's 7x7: the classifier's fc7.
    model = fcnseg.build_model("fcn32s_vgg16", geometry="modern", backbone_weights=out, fc_width=FC).eval()
    assert model.fcn_config["input_convention"] == "caffe"
    with torch.no_grad():
        x = torch.from_numpy(normalize(image))
        fc7 = model.backbone(model.prepare_input(x))["fc7"][0, :, 3, 3].numpy()
    span = float(np.abs(oracle).max())
    assert span > 1.0
    assert np.abs(fc7 - oracle).max() <= 1e-3 * span
    # asking for another convention than the weights' is refused, with the fix
    with pytest.raises(CheckpointError, match="leave it unset"):
        fcnseg.build_model("fcn32s_vgg16", backbone_weights=out, fc_width=FC, input_convention="imagenet")


# ----------------------------------------------------------------------------- point 4: every path

@pytest.fixture(scope="module")
def imported(nets, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(checkpoint imported from the at-once net, OpenCV's logits on nets.image)."""
    proto, caffemodel, oracle = nets.get("fcn8s-atonce")
    ckpt = tmp_path_factory.mktemp("imported") / "fcn8s-atonce.pt"
    rc, _, err = run_cli(["import", "caffe", "--caffemodel", str(caffemodel), "--out", str(ckpt)])
    assert rc == 0, err
    return ckpt, oracle


@pytest.mark.slow
def test_predict_cli_honours_the_convention(nets, imported, tmp_path):
    ckpt, oracle = imported
    rc, _, err = run_cli(["predict", "--checkpoint", str(ckpt), str(nets.image_path), "--out", str(tmp_path / "p")])
    assert rc == 0, err
    labels = read_mask(tmp_path / "p" / "photo.png", 21)
    assert (labels == oracle[0].argmax(0)).mean() >= 0.999


@pytest.mark.slow
def test_eval_honours_the_convention(nets, imported, tmp_path):
    """Ground truth = OpenCV's labels: the checkpoint scores ~100% pixel accuracy."""
    from conftest import save_palette_mask

    ckpt, oracle = imported
    data = tmp_path / "data"
    write_image(data / "images" / "val" / "photo.png", nets.image)
    save_palette_mask(oracle[0].argmax(0).astype(np.uint8), data / "masks" / "val" / "photo.png")
    (data / "class_names.txt").write_text("".join(f"{n}\n" for n in VOC_CLASSES))  # 21, whatever the labels
    rc, out, err = run_cli(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json",
                            "--workers", "0", "--device", "cpu"])
    assert rc == 0, err
    scores = json.loads(out[out.index("{"):])
    assert scores["pixel_acc"] >= 0.999


@pytest.mark.slow
def test_onnx_export_contains_the_conversion(nets, imported, tmp_path):
    """The exported graph converts the standard input itself: onnxruntime on the standard
    input equals PyTorch, and OpenCV's Caffe net on Caffe's input."""
    ort = pytest.importorskip("onnxruntime")
    from fcnseg.export import export_onnx

    ckpt, oracle = imported
    onnx_path = tmp_path / "fcn8s-atonce.onnx"
    export_onnx(ckpt, onnx_path, check_shapes=((1, H, W),))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = normalize(nets.image)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    model = fcnseg.load_model(ckpt)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4 * float(want.max() - want.min())
    assert_matches(got, oracle, "onnx")


# ----------------------------------------------------------------------------- bad input

def tiny_caffemodel(prototxt: Path, out: Path, **overrides: list[np.ndarray]) -> Path:
    """The prototxt's net with a 1-value blob per weight (shape checks fail; names do not)."""
    from fcnseg.weights.caffe_proto import read_prototxt

    net = read_prototxt(prototxt)
    names = [l.name for l in (list(net.layer) or list(net.layers))
             if l.type in ("Convolution", "Deconvolution", "Scale", 4, 14, 39)]
    weights = {n: [np.ones(1, np.float32)] * (1 if n.startswith(("upscore", "scale")) else 2) for n in names}
    weights.update(overrides)
    return ref.write_caffemodel(prototxt, out, weights)


def blobs_only_caffemodel(path: Path, names: tuple[str, ...]) -> Path:
    """A current-format caffemodel holding just these layers, each with one 1-value blob."""
    from fcnseg.weights.caffe_proto import NetParameter

    net = NetParameter()
    for name in names:
        layer = net.layer.add(name=name, type="Convolution")
        layer.blobs.add().data.append(1.0)
    path.write_bytes(net.SerializeToString())
    return path


def write_proto(tmp_path: Path, variant: str = "32s", at_once: bool = False, **replace: str) -> Path:
    text = ref.fcn_deploy_prototxt(variant, at_once=at_once, fc_width=FC)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / f"{variant}{'-atonce' if at_once else ''}.prototxt"
    path.write_text(text)
    return path


def assert_one_line_error(argv: list[str], out: Path, *needles: str) -> str:
    rc, stdout, err = run_cli(argv)
    assert rc == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temp files
    return lines[0]


def import_argv(caffemodel: Path, out: Path, *extra: str) -> list[str]:
    return ["import", "caffe", "--caffemodel", str(caffemodel), *extra, "--out", str(out)]


def test_truncated_and_non_caffe_files_are_refused(tmp_path):
    proto = write_proto(tmp_path)
    good = tiny_caffemodel(proto, tmp_path / "good.caffemodel").read_bytes()
    out = tmp_path / "out" / "model.pt"
    out.parent.mkdir()
    # cut inside a blob's data, inside a layer, at arbitrary places: every one is one clear line
    for i, cut in enumerate((len(good) // 2, len(good) - 3, 7, len(good) * 9 // 10)):
        bad = tmp_path / f"truncated{i}.caffemodel"
        bad.write_bytes(good[:cut])
        assert_one_line_error(import_argv(bad, out), out, str(bad))
    truncated = tmp_path / "truncated0.caffemodel"
    msg = assert_one_line_error(import_argv(truncated, out), out)
    assert "truncated" in msg and "download it again" in msg
    # not Caffe at all: an image, a PyTorch file, random bytes, an empty file, a text prototxt
    png = write_image(tmp_path / "photo.png", smooth_image(20, 30))
    pt = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(3)}, pt)
    noise = tmp_path / "noise.caffemodel"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    for bad in (png, pt, noise, empty, proto):
        msg = assert_one_line_error(import_argv(bad, out), out, str(bad))
        assert "caffemodel" in msg
    assert_one_line_error(import_argv(tmp_path / "missing.caffemodel", out), out, "no such file")


def test_no_pickle_is_ever_loaded(tmp_path):
    """A pickle whose loading would run code is only bytes to the importer."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "evil.caffemodel"
    bad.write_bytes(pickle.dumps(Payload()))
    out = tmp_path / "model.pt"
    assert_one_line_error(import_argv(bad, out), out, str(bad))
    assert_one_line_error(import_argv(bad, out, "--backbone", "vgg16"), out, str(bad))
    assert not marker.exists()


def test_mismatching_prototxt_and_caffemodel_are_refused(tmp_path):
    out = tmp_path / "model.pt"
    p32, p8 = write_proto(tmp_path, "32s"), write_proto(tmp_path, "8s")
    m32, m8 = tiny_caffemodel(p32, tmp_path / "32s.caffemodel"), tiny_caffemodel(p8, tmp_path / "8s.caffemodel")
    msg = assert_one_line_error(import_argv(m8, out, "--prototxt", str(p32)), out, str(m8), "do not belong together")
    assert "score_pool3" in msg
    assert_one_line_error(import_argv(m32, out, "--prototxt", str(p8)), out, str(m32), "no weights for layer")
    # shapes: the tiny blobs do not fit VGG16's layers
    msg = assert_one_line_error(import_argv(m32, out), out, str(m32), "conv1_1", "shape")
    # the prototxt given as the caffemodel and the other way round
    assert_one_line_error(import_argv(p32, out, "--prototxt", str(m32)), out, str(p32))
    assert_one_line_error(import_argv(m32, out, "--prototxt", str(m32)), out, str(m32), "not a text file")


@pytest.mark.parametrize("replace, needles", [
    ({"pad: 100": "pad: 1"}, ("conv1_1", "pad (1, 1)", "(100, 100)")),
    ({"offset: 19": "offset: 18"}, ("Crop layer score", "offset [18]", "by 19")),
    ({"kernel_size: 64\n    stride: 32": "kernel_size: 64\n    stride: 16"}, ("upscore", "stride")),
    ({"pool: MAX": "pool: AVE"}, ("pool1", "max-pools")),
])
def test_geometry_that_differs_from_the_reference_is_refused(tmp_path, replace, needles):
    """Checked from the prototxt, and from the caffemodel's own copy of the layer parameters."""
    proto = write_proto(tmp_path, "32s", **replace)
    model = tiny_caffemodel(proto, tmp_path / "m.caffemodel")
    out = tmp_path / "model.pt"
    assert_one_line_error(import_argv(model, out, "--prototxt", str(proto)), out, str(proto), *needles)
    assert_one_line_error(import_argv(model, out), out, str(model), *needles)


def test_unknown_variants_are_refused(tmp_path):
    out = tmp_path / "model.pt"
    proto = write_proto(tmp_path, "32s")
    # no score_fr: an older or foreign net
    renamed = tmp_path / "renamed.prototxt"
    renamed.write_text(proto.read_text().replace('"score_fr"', '"score59"'))
    renamed_model = tiny_caffemodel(renamed, tmp_path / "renamed.caffemodel")
    for argv in (import_argv(renamed_model, out, "--prototxt", str(renamed)), import_argv(renamed_model, out)):
        assert_one_line_error(argv, out, "unknown net", "score_fr", "fcn8s-atonce-pascal")
    # FCN-AlexNet (conv1..conv5)
    alex = blobs_only_caffemodel(tmp_path / "alex.caffemodel", ("conv1", "conv2", "fc6", "fc7", "score_fr"))
    alex_classifier = blobs_only_caffemodel(tmp_path / "alexnet.caffemodel", ("conv1", "conv2", "fc6", "fc7"))
    assert_one_line_error(import_argv(alex_classifier, out), out, str(alex_classifier), "AlexNet")
    assert_one_line_error(import_argv(alex, out), out, str(alex), "missing: conv1_1")
    # partial at-once net: scale_pool4 without scale_pool3
    p8 = write_proto(tmp_path, "8s", at_once=True)
    partial = tiny_caffemodel(p8, tmp_path / "partial.caffemodel", scale_pool3=[])
    assert_one_line_error(import_argv(partial, out), out, "missing: scale_pool3")
    # a VGG16 classifier without --backbone: the fix is named
    vgg = tmp_path / "vgg.prototxt"
    vgg.write_text(ref.vgg16_v1_prototxt(fc_width=FC, num_outputs=10))
    vgg_model = tiny_caffemodel(vgg, tmp_path / "vgg.caffemodel")
    assert_one_line_error(import_argv(vgg_model, out), out, "--backbone vgg16")
    # --backbone on a net that is no VGG16
    assert_one_line_error(import_argv(alex_classifier, out, "--backbone", "vgg16"), out, "not a VGG16 net")


def test_out_is_never_half_written_or_silently_replaced(tmp_path):
    proto = write_proto(tmp_path)
    bad = tiny_caffemodel(proto, tmp_path / "bad.caffemodel")
    out = tmp_path / "model.pt"
    out.write_bytes(b"precious")
    rc, _, err = run_cli(import_argv(bad, out))
    assert rc == 2 and "--overwrite" in err and out.read_bytes() == b"precious"
    rc, _, err = run_cli(import_argv(bad, out, "--overwrite"))  # fails on the shapes
    assert rc == 2 and out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_missing_protobuf_gives_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    monkeypatch.delitem(sys.modules, "fcnseg.weights.caffe_proto", raising=False)
    import fcnseg.weights

    monkeypatch.delattr(fcnseg.weights, "caffe_proto", raising=False)
    out = tmp_path / "model.pt"
    rc, _, err = run_cli(import_argv(tmp_path / "x.caffemodel", out))
    assert rc == 2 and "pip install 'fcnseg[caffe]'" in err and len(err.strip().splitlines()) == 1


def test_import_command_lists_its_importers():
    rc, out, err = run_cli(["import"])
    assert rc == 2 and "caffe" in err
    from fcnseg.weights.import_cli import IMPORTERS

    assert IMPORTERS["caffe"][0] == "fcnseg.weights.caffe"
    with pytest.raises(SystemExit):
        run_cli(["import", "caffe", "--help"])


def test_caffe_proto_field_numbers_match_caffe_proto():
    """Spot checks against BVLC caffe.proto (src/caffe/proto/caffe.proto): the numbers that the
    OpenCV comparisons above rely on, stated independently here."""
    from fcnseg.weights import caffe_proto as cp

    def number(msg, field):
        return msg.DESCRIPTOR.fields_by_name[field].number

    assert number(cp.NetParameter, "layer") == 100 and number(cp.NetParameter, "layers") == 2
    assert [number(cp.LayerParameter, f) for f in ("name", "type", "bottom", "top", "blobs")] == [1, 2, 3, 4, 7]
    assert [number(cp.V1LayerParameter, f) for f in ("name", "type", "blobs")] == [4, 5, 6]
    assert [number(cp.BlobProto, f) for f in ("num", "channels", "height", "width", "data", "shape")] == \
        [1, 2, 3, 4, 5, 7]
    assert cp.BlobProto.DESCRIPTOR.fields_by_name["data"].GetOptions().packed
    enum = cp.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"]
    assert (enum.values_by_name["CONVOLUTION"].number, enum.values_by_name["INNER_PRODUCT"].number) == (4, 14)


def test_backbone_file_and_train_pick_up_the_convention(tmp_path, synthetic_voc):
    """``fcnseg train --backbone-weights FILE`` with a caffe backbone file: the run's model
    converts its input itself, says so, and its checkpoints record the convention."""
    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.models.backbones import BACKBONES

    backbone = BACKBONES["vgg16"](geometry="modern", fc_width=8)
    weights = tmp_path / "vgg16_caffe.pt"
    torch.save({"format": "fcnseg-backbone", "format_version": 1, "arch": "vgg16", "input_convention": "caffe",
                "state_dict": backbone.state_dict()}, weights)
    rc, out, err = run_cli(["train", "--data", str(synthetic_voc), "--model", "fcn32s_vgg16",
                            "--model-arg", "fc_width=8", "--backbone-weights", str(weights), "--iters", "1",
                            "--batch-size", "1", "--crop-size", "32x48", "--workers", "0", "--device", "cpu",
                            "--amp", "off", "--out", str(tmp_path / "run")])
    assert rc == 0, err
    assert "input convention 'caffe'" in out + err
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["model"]["input_convention"] == "caffe"
