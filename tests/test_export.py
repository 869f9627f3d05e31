"""ONNX export (both geometries, dynamic B/H/W, verified, atomic) and the torch-free
``fcnseg predict --runtime onnx`` path."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import fcnseg  # noqa: E402
from fcnseg.cli import main  # noqa: E402
from fcnseg.export import ExportCheckError, _has_onnxscript, export_onnx  # noqa: E402
from fcnseg.infer.onnx_runner import META_CLASS_NAMES, META_PALETTE, OnnxModel  # noqa: E402

from _predict_utils import CLASS_NAMES, PALETTE, save_tiny_checkpoint, smooth_image, write_image  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{geometry: (checkpoint, onnx path, report or CLI stdout)}: modern via the CLI (opset 17,
    TorchScript exporter), caffe via the API (opset 18, dynamo exporter): both exporters work."""
    d = tmp_path_factory.mktemp("export")
    result = {}
    ck = save_tiny_checkpoint(d / "modern.pt", "modern")
    argv = ["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(d / "modern.onnx"),
            "--opset", "17"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    assert rc == 0
    result["modern"] = (ck, d / "modern.onnx", buf.getvalue())
    ck = save_tiny_checkpoint(d / "caffe.pt", "caffe", seed=1)
    result["caffe"] = (ck, d / "caffe.onnx", export_onnx(ck, d / "caffe.onnx", opset=18))
    return result


def test_cli_export_reports_the_check(exported):
    _, path, stdout = exported["modern"]
    assert path.is_file()
    assert stdout.count("argmax agreement 100.000%") == 4, stdout  # 4 sizes checked
    assert "1x3x37x83" in stdout and "2x3x101x59" in stdout and "1x3x9x13" in stdout
    assert "torchscript exporter, opset 17" in stdout


@pytest.mark.parametrize("geometry", ["modern", "caffe"])
def test_exported_model_matches_torch_on_new_sizes(exported, geometry):
    ck, path, _ = exported[geometry]
    model = fcnseg.load_model(ck)
    onnx_model = OnnxModel(path)
    assert onnx_model.num_classes == 5
    assert onnx_model.class_names == CLASS_NAMES
    assert [tuple(c) for c in onnx_model.palette] == PALETTE
    assert onnx_model.config["geometry"] == geometry
    gen = torch.Generator().manual_seed(3)
    for b, h, w in [(1, 45, 71), (3, 32, 32), (1, 7, 129)]:  # sizes the export never saw
        x = torch.randn(b, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        got = onnx_model(x.numpy())
        assert got.shape == ref.shape == (b, 5, h, w)
        diff = float(np.abs(got - ref).max())
        print(f"{geometry} {b}x3x{h}x{w}: max |onnx - torch| = {diff:.2e}")
        assert diff <= 1e-3 * float(np.abs(ref).max()) + 1e-4
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_api_report_and_metadata(exported):
    import onnx

    _, path, report = exported["caffe"]
    assert len(report.checks) == 4 and report.opset == 18
    assert report.exporter == ("dynamo" if _has_onnxscript() else "torchscript")
    assert report.max_abs_diff < 1e-3 and report.min_agreement >= 0.999
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta[META_CLASS_NAMES]) == CLASS_NAMES
    assert json.loads(meta[META_PALETTE]) == [list(c) for c in PALETTE]
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_param") for d in dims] == [True, False, True, True]  # dynamic B, H, W


def test_failed_check_writes_nothing(exported, tmp_path, monkeypatch):
    """If onnxruntime disagrees with PyTorch, export fails and leaves no file (or the old one)."""
    import fcnseg.export as ex

    wrong = exported["caffe"][1].read_bytes()  # a different model: the check must catch it
    monkeypatch.setattr(ex, "_export_bytes", lambda model, exporter, opset, meta: (wrong, 17))
    ck = exported["modern"][0]
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportCheckError, match="nothing was written"):
        export_onnx(ck, out)
    assert not out.exists() and not list(tmp_path.iterdir())
    out.write_bytes(b"old")
    with pytest.raises(ExportCheckError):
        export_onnx(ck, out)
    assert out.read_bytes() == b"old"


def test_cli_export_refuses_to_overwrite(exported, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    rc = main(["export", "--checkpoint", str(exported["modern"][0]), "--out", str(out)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"old"


_NO_TORCH_WRAPPER = textwrap.dedent("""
    import json, sys
    from fcnseg.cli import main
    rc = main(sys.argv[1:])
    print(json.dumps({"rc": rc, "torch_imported": "torch" in sys.modules,
                      "fcnseg_modules": sorted(m for m in sys.modules if m.startswith("fcnseg"))}))
""")


def test_predict_onnx_runtime_never_imports_torch(exported, tmp_path):
    ck, onnx_path, _ = exported["modern"]
    images = [write_image(tmp_path / "in" / "p.png", smooth_image(37, 53, seed=5)),
              write_image(tmp_path / "in" / "q.png", smooth_image(90, 61, seed=6))]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH_WRAPPER, "predict", "--runtime", "onnx",
                           "--model", str(onnx_path), str(tmp_path / "in"), "--out", str(out),
                           "--heatmaps", "--tile", "64", "--overlap", "16"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status["rc"] == 0, proc.stderr
    assert status["torch_imported"] is False, status["fcnseg_modules"]
    model = fcnseg.load_model(ck)
    for path in images:
        image = np.asarray(Image.open(path).convert("RGB"))
        seg = Image.open(out / f"{path.stem}.png")
        assert seg.mode == "P" and seg.getpalette()[:15] == [v for c in PALETTE for v in c]
        expected = fcnseg.segment(model, image, tile=64, overlap=16)
        assert (np.asarray(seg) == expected).mean() >= 0.999
        assert (out / f"{path.stem}_overlay.png").is_file()
        assert (out / f"{path.stem}_prob_background.png").is_file()


@pytest.mark.parametrize("name,exporter,opset", [("fcn8s_efficientnet_lite0", "torchscript", 17),
                                                 ("unet_efficientnet_lite0", "dynamo", 18)])
def test_inputs_below_the_min_size_export(name, exporter, opset, tmp_path):
    """Regression: EfficientNet-Lite nets need >= 32 pixels per side, so forward() zero-pads
    smaller inputs. That pad was a Python ``if``, frozen by the tracer at the example's size
    (67x93, no pad), and onnxruntime then failed on 9x13 ("Invalid input shape: {1,1}" in a
    depthwise conv) -- `fcnseg export` refused every Lite checkpoint. The pads are now computed
    from the input's shape inside the graph; sizes below, at and above 32 must match PyTorch.
    The heads are changed in place after construction: export must not trace FCN's cached
    per-class upsampling kernels stale (it runs one eager forward first)."""
    if exporter == "dynamo" and not _has_onnxscript():
        pytest.skip("onnxscript (the dynamo exporter) is not installed")
    from fcnseg.export import export_model
    from fcnseg.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=5).eval()
    assert model.min_input_size == 32
    with torch.no_grad():  # non-zero heads (score convs start at zero), so the check compares something
        for pname, p in model.named_parameters():
            if not pname.startswith("backbone."):
                p.add_(0.1 * torch.randn_like(p))
    shapes = ((1, 1, 1), (1, 9, 13), (2, 31, 20), (1, 32, 32), (1, 33, 65))
    report = export_model(model, tmp_path / "m.onnx", metadata={}, opset=opset, exporter=exporter,
                          check_shapes=shapes)
    assert report.exporter == exporter and report.opset == opset
    assert [c.shape for c in report.checks] == [(b, 3, h, w) for b, h, w in shapes]
    assert max(c.logit_scale for c in report.checks) > 0.1  # the logits are not all zero
    assert report.min_agreement >= 0.999
