"""OpenVINO as an export format and a runtime: `fcnseg export --format openvino [--int8]` (verified
against PyTorch, the .xml + .bin pair written atomically) and `fcnseg predict --runtime openvino`
(torch-free), `fcnseg.load_model("model.xml")`, and the OpenVINO rows of benchmarks/precision_table.py.

Not collected by the main suite (the file name does not start with test_): tests/test_openvino.py
runs it in a pytest process of its own. OpenVINO's CPU plugin leaves worker threads in the process
that used it, and the main suite crashed with SIGSEGV in a later test that starts subprocesses
(tests/test_layout.py's import probe, 2026-12-03).
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

import fcnseg  # noqa: E402
from fcnseg.cli import main  # noqa: E402
from fcnseg.errors import CheckpointError, ConfigError  # noqa: E402
from fcnseg.export import ExportCheckError  # noqa: E402
from fcnseg.infer.arrays import normalize  # noqa: E402
from fcnseg.infer.onnx_runner import META_FORMAT, META_INT8  # noqa: E402
from fcnseg.infer.openvino_runner import OPENVINO_FORMAT, OpenVinoModel  # noqa: E402
from fcnseg.infer.runner import as_runner  # noqa: E402
from fcnseg.predict import load_runner  # noqa: E402

from _engine_utils import subprocess_env, torch_one_thread  # noqa: E402,F401 (autouse fixture)
from _int8_fixtures import shapes_data, trained_ckpt  # noqa: E402,F401 (fixtures)
from _predict_utils import CLASS_NAMES, PALETTE, save_tiny_checkpoint, smooth_image, write_image  # noqa: E402


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, model.xml, the CLI's stdout): a tiny random-head fcn8s_small, fp32 IR."""
    d = tmp_path_factory.mktemp("ov")
    ck = save_tiny_checkpoint(d / "tiny.pt")
    rc, stdout = _cli("export", "--checkpoint", str(ck), "--format", "openvino", "--out", str(d / "model.xml"))
    assert rc == 0
    return ck, d / "model.xml", stdout


def test_cli_export_reports_the_openvino_check(exported):
    _, path, stdout = exported
    assert path.is_file() and path.with_suffix(".bin").is_file()
    assert "converted by OpenVINO" in stdout and "OpenVINO" in stdout.splitlines()[0]
    assert stdout.count("argmax agreement 100.000%") == 4, stdout  # export.CHECK_SHAPES
    assert "2x3x101x59" in stdout and "1x3x9x13" in stdout
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.bin", "model.xml", "tiny.pt"]  # no leftovers


def test_fp32_ir_matches_torch_on_new_sizes(exported):
    ck, path, _ = exported
    model = fcnseg.load_model(ck)  # the independent reference: the PyTorch model itself
    ov_model = OpenVinoModel(path, threads=1)
    gen = torch.Generator().manual_seed(3)
    for b, h, w in [(1, 45, 71), (2, 33, 50), (1, 7, 129)]:  # sizes the export never saw, batch 2
        x = torch.randn(b, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        got = ov_model(x.numpy())
        assert got.shape == ref.shape == (b, 5, h, w) and got.dtype == np.float32
        assert float(np.abs(got - ref).max()) <= 1e-3 * float(np.abs(ref).max()) + 1e-4  # the export tolerance
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_metadata_round_trips_and_the_api_runs_it(exported):
    _, path, _ = exported
    model = fcnseg.load_model(path)
    assert isinstance(model, OpenVinoModel) and model.is_fcnseg_runner
    assert model.num_classes == 5 and model.class_names == CLASS_NAMES
    assert [tuple(c) for c in model.palette] == PALETTE
    assert model.config["name"] == "fcn8s_small" and model.config["geometry"] == "modern"
    assert model.precision == "fp32" and model.metadata[META_FORMAT] == OPENVINO_FORMAT
    assert json.loads(model.metadata["fcnseg.normalization"])["std"] == [0.229, 0.224, 0.225]
    image = smooth_image(41, 67, seed=4)
    labels = fcnseg.segment(model, image)
    assert labels.shape == (41, 67) and labels.dtype == np.uint8
    assert as_runner(model, "fp32") is model
    with pytest.raises(ConfigError, match="--precision int8: .* is a fp32 model"):
        fcnseg.segment(model, image, precision="int8")
    assert isinstance(load_runner(str(path), None, "cpu"), OpenVinoModel)  # .xml picks openvino


_NO_TORCH_WRAPPER = textwrap.dedent("""
    import json, sys
    from fcnseg.cli import main
    rc = main(sys.argv[1:])
    print(json.dumps({"rc": rc, "torch_imported": "torch" in sys.modules}))
""")


def test_predict_openvino_writes_the_masks_torch_writes_without_torch(exported, tmp_path):
    ck, path, _ = exported
    folder = tmp_path / "in"
    images = [write_image(folder / "p.png", smooth_image(37, 53, seed=5)),
              write_image(folder / "q.png", smooth_image(90, 61, seed=6))]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH_WRAPPER, "predict", "--runtime", "openvino",
                           "--checkpoint", str(path), str(folder), "--out", str(tmp_path / "ov")],
                          capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == {"rc": 0, "torch_imported": False}
    assert main(["predict", "--runtime", "torch", "--checkpoint", str(ck), str(folder),
                 "--out", str(tmp_path / "pt")]) == 0
    for image in images:
        got = Image.open(tmp_path / "ov" / f"{image.stem}.png")
        want = np.asarray(Image.open(tmp_path / "pt" / f"{image.stem}.png"))
        assert got.mode == "P" and got.getpalette()[:15] == [v for c in PALETTE for v in c]
        assert (np.asarray(got) == want).mean() >= 0.999
        assert (tmp_path / "ov" / f"{image.stem}_overlay.png").is_file()


def test_int8_export_records_its_agreement_and_agrees_with_fp32(trained_ckpt, shapes_data, tmp_path, capsys):
    pytest.importorskip("nncf")
    from fcnseg.quantize import calibration_files

    out = tmp_path / "q.xml"
    assert main(["export", "--checkpoint", str(trained_ckpt), "--format", "openvino", "--out", str(out),
                 "--int8", "--calib-data", str(shapes_data), "--calib-images", "8",
                 "--int8-min-agreement", "0.8"]) == 0
    stdout = capsys.readouterr().out
    assert "NNCF" in stdout and "calibrated on 8 images" in stdout and "argmax agreement" in stdout
    model = fcnseg.load_model(out)
    assert model.precision == "int8" and model.num_classes == 4
    info = json.loads(model.metadata[META_INT8])
    assert info["tool"].startswith("NNCF ") and info["calibration_images"] == 8 and info["check_images"] == 8
    assert 0.8 <= info["agreement"] <= 1.0
    # Re-measured independently on the val split (neither calibrated nor checked on), against eager
    # fp32 PyTorch. A net trained for seconds has many near-ties (a trained CamVid net's 99% is
    # benchmarks/precision_table.py's): where fp32 decides by a clear margin, int8 must mostly give
    # the same class. NNCF's PERFORMANCE preset (symmetric int8 activations) is coarser here than
    # the ONNX int8 path, and 16 train images leave none for its accuracy control.
    ref_model = fcnseg.load_model(trained_ckpt)
    agree = pixels = sure_agree = sure = 0
    for f in calibration_files(shapes_data, "val"):
        x = normalize(np.asarray(Image.open(f).convert("RGB")))
        with torch.inference_mode():
            ref = ref_model(torch.from_numpy(x)).numpy()[0]  # (C, H, W)
        same = model(x)[0].argmax(0) == ref.argmax(0)
        top2 = np.sort(ref, axis=0)[-2:]
        confident = (top2[1] - top2[0]) > 0.2 * np.abs(ref).max()
        agree, pixels = agree + int(same.sum()), pixels + same.size
        sure_agree, sure = sure_agree + int(same[confident].sum()), sure + int(confident.sum())
    assert agree / pixels >= 0.8 and sure_agree / max(sure, 1) >= 0.95, (agree / pixels, sure_agree / sure)
    img = calibration_files(shapes_data, "val")[0]
    assert main(["predict", str(img), "--checkpoint", str(out), "--out", str(tmp_path / "p"),
                 "--precision", "int8"]) == 0  # .xml: the OpenVINO runtime, int8 as exported
    assert (tmp_path / "p" / f"{img.stem}.png").is_file()
    from fcnseg.engine.evaluate import run_eval

    scores = run_eval(str(out), str(shapes_data), precision="int8", workers=0, device="cpu", progress=False)
    assert scores["precision"] == "int8" and 0.0 < scores["pixel_acc"] <= 1.0


def test_accuracy_control_reaches_its_target_on_its_own_images(trained_ckpt, shapes_data, tmp_path):
    """NNCF's accuracy control reverts layers to fp32 until the agreement with fp32 on its
    validation images reaches the target: re-measured here on those images with the saved IR, as
    predict runs it, against plain NNCF (the same calibration) on the same images."""
    pytest.importorskip("nncf")
    from fcnseg import quantize as Q
    from fcnseg.export_openvino import export_openvino_int8

    ckpt_model = fcnseg.load_model(trained_ckpt)
    _, rest, _ = Q.split_files(Q.calibration_files(shapes_data, "train"), 4, 4 + 8)
    ac_files = rest[4:]  # the images export_openvino_int8 validates on (after 4 check images)
    assert len(ac_files) == 8

    def measured(path):
        runner = OpenVinoModel(path)
        return Q.compare_run(ckpt_model, lambda x: runner(x), ac_files)[0]

    plain = export_openvino_int8(trained_ckpt, tmp_path / "plain.xml", shapes_data, calib_images=4, check_images=4,
                                 min_agreement=0.0, ac_images=0)
    assert "accuracy_control" not in plain.tool
    target = 0.99
    ac = export_openvino_int8(trained_ckpt, tmp_path / "ac.xml", shapes_data, calib_images=4, check_images=4,
                              min_agreement=0.0, target_agreement=target, ac_images=8)
    assert "quantize_with_accuracy_control (agreement >= 0.99 on 8 other train images)" in ac.tool
    before, after = measured(tmp_path / "plain.xml"), measured(tmp_path / "ac.xml")
    assert before < target, before  # else this test shows nothing: plain NNCF already reaches it
    assert after >= target, (before, after)
    meta = OpenVinoModel(tmp_path / "ac.xml").metadata
    assert json.loads(meta[META_INT8])["tool"] == ac.tool


def test_int8_below_the_threshold_writes_nothing_and_keeps_the_old_pair(trained_ckpt, shapes_data, tmp_path):
    pytest.importorskip("nncf")
    from fcnseg.export_openvino import export_openvino_int8

    out = tmp_path / "q.xml"
    out.write_bytes(b"old xml")
    out.with_suffix(".bin").write_bytes(b"old bin")
    with pytest.raises(ExportCheckError, match=r"agrees with fp32 on \d+\.\d\d% .*need 100\.00%.*nothing was "
                                               r"written.*--calib-images") as refused:
        # (no accuracy control: it would revert layers until it reached 100%)
        export_openvino_int8(trained_ckpt, out, shapes_data, calib_images=4, check_images=8, min_agreement=1.0,
                             ac_images=0)
    assert "--format openvino" not in str(refused.value)  # the ONNX refusal's hint, not this one's
    assert out.read_bytes() == b"old xml" and out.with_suffix(".bin").read_bytes() == b"old bin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.bin", "q.xml"]  # no staging folder left


def test_failed_openvino_check_writes_nothing_and_overwrite_replaces_the_pair(exported, tmp_path, monkeypatch):
    import fcnseg.export_openvino as E

    ck = exported[0]
    out = tmp_path / "m.xml"
    out.write_bytes(b"old xml")
    out.with_suffix(".bin").write_bytes(b"old bin")
    real = E.compare_with_torch
    # An IR that disagrees with PyTorch (its logits shifted per class): the check must refuse it.
    monkeypatch.setattr(E, "compare_with_torch", lambda model, run, *a: real(
        model, lambda x: run(x) + np.arange(5, dtype=np.float32)[:, None, None] * 10, *a))
    with pytest.raises(ExportCheckError, match="OpenVINO export disagrees with PyTorch.*nothing was written"):
        E.export_openvino(ck, out)
    assert out.read_bytes() == b"old xml" and out.with_suffix(".bin").read_bytes() == b"old bin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
    monkeypatch.undo()
    rc, _ = _cli("export", "--checkpoint", str(ck), "--format", "openvino", "--out", str(out), "--overwrite")
    assert rc == 0 and OpenVinoModel(out).num_classes == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


def test_install_pair_puts_the_old_pair_back_on_failure(tmp_path, monkeypatch):
    import fcnseg.export_openvino as E

    out = tmp_path / "m.xml"
    out.write_text("old xml")
    out.with_suffix(".bin").write_text("old bin")
    staged = tmp_path / ".stage" / "m.xml"
    staged.parent.mkdir()
    staged.write_text("new xml")
    staged.with_suffix(".bin").write_text("new bin")
    real = E.os.replace

    def failing_replace(src, dst):
        if str(src) == str(staged):  # the new .xml, moved last
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(E.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        E.install_pair(staged, out)
    assert out.read_text() == "old xml" and out.with_suffix(".bin").read_text() == "old bin"
    monkeypatch.undo()
    (staged.parent / "replaced").rmdir()
    E.install_pair(staged, out)
    assert out.read_text() == "new xml" and out.with_suffix(".bin").read_text() == "new bin"


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fcnseg {command}: error: "), err
    return lines[0]


def test_missing_bin_not_fcnseg_and_wrong_suffix_are_one_line_errors(exported, tmp_path, capsys):
    ck, path, _ = exported
    photo = write_image(tmp_path / "a.png", smooth_image(16, 16))
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(path.read_bytes())  # no lonely.bin
    with pytest.raises(CheckpointError, match=r"lonely\.bin are missing"):
        fcnseg.load_model(lonely)
    assert main(["predict", "--checkpoint", str(lonely), str(photo), "--out", str(tmp_path / "o")]) == 2
    assert "lonely.bin are missing" in _one_error_line(capsys.readouterr().err, "predict")
    assert not (tmp_path / "o").exists()
    # an IR that fcnseg did not write: the same graph without the fcnseg rt_info
    stripped = tmp_path / "stripped.xml"
    stripped.write_text(_without_fcnseg_rt_info(path.read_text()))
    stripped.with_suffix(".bin").write_bytes(path.with_suffix(".bin").read_bytes())
    with pytest.raises(CheckpointError, match="not an fcnseg OpenVINO model"):
        OpenVinoModel(stripped)
    # suffixes: export --format openvino needs .xml; --runtime openvino needs a .xml model
    assert main(["export", "--checkpoint", str(ck), "--format", "openvino", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "use a .xml file name for --format openvino" in _one_error_line(capsys.readouterr().err, "export")
    assert main(["predict", "--runtime", "openvino", "--checkpoint", str(ck), str(photo),
                 "--out", str(tmp_path / "o")]) == 2
    assert "--runtime openvino needs a .xml model" in _one_error_line(capsys.readouterr().err, "predict")
    assert main(["predict", "--runtime", "torch", "--checkpoint", str(path), str(photo),
                 "--out", str(tmp_path / "o")]) == 2
    assert "--runtime openvino" in _one_error_line(capsys.readouterr().err, "predict")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "o").exists()


def _without_fcnseg_rt_info(xml: str) -> str:
    start, end = xml.index("<fcnseg>"), xml.index("</fcnseg>") + len("</fcnseg>")
    return xml[:start] + xml[end:]


def test_without_openvino_predict_and_export_say_what_to_install(exported, tmp_path, monkeypatch, capsys):
    ck, path, _ = exported
    photo = write_image(tmp_path / "a.png", smooth_image(16, 16))
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails as if not installed
    hint = "pip install 'fcnseg[openvino]' (or pip install openvino)"
    assert main(["predict", "--checkpoint", str(path), str(photo), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys.readouterr().err, "predict")
    assert "running an OpenVINO model needs the optional package openvino" in line and line.endswith(hint)
    assert main(["export", "--checkpoint", str(ck), "--format", "openvino", "--out", str(tmp_path / "m.xml")]) == 2
    assert _one_error_line(capsys.readouterr().err, "export").endswith(hint)
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.xml").exists()


def test_precision_table_openvino_rows(trained_ckpt, shapes_data, tmp_path):
    """benchmarks/precision_table.py's OpenVINO rows (fp32 with the f32 hint: as exact as onnxruntime;
    NNCF int8 scored against the same fp32 run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import precision_table

    out = tmp_path / "t.json"
    paths = ["fp32_eager", *precision_table.OPENVINO_PATHS]
    assert precision_table.main(["--checkpoint", str(trained_ckpt), "--data", str(shapes_data), "--threads", "1",
                                 "--repeats", "1", "--latency-size", "32x48", "--calib-images", "8",
                                 "--json", str(out), "--paths", ",".join(paths)]) == 0
    rows = {r["path"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == paths
    assert rows["fp32_openvino"]["agreement_vs_fp32"] >= 0.999
    assert abs(rows["fp32_openvino"]["miou"] - rows["fp32_eager"]["miou"]) < 1e-3
    assert 0.5 < rows["int8_openvino"]["agreement_vs_fp32"] <= 1.0
