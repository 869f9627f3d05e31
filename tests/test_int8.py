"""int8 export (`fcnseg export --int8 --calib-data DIR`, onnxruntime quantize_static QDQ) and int8 as a
runtime precision: FCN (VGG-style, ResNet, EfficientNet-Lite's depthwise convs) and U-Net, checked
against fp32 PyTorch; a quantisation that breaks the answer is refused and writes nothing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fcnseg.api import load_model
from fcnseg.checkpoint import save_checkpoint
from fcnseg.cli import main
from fcnseg.data.image_files import read_image, read_mask
from fcnseg.data.voc import VOCSegmentation
from fcnseg.engine.evaluate import run_eval
from fcnseg.export import ExportCheckError, export_int8
from fcnseg.infer.arrays import normalize
from fcnseg.infer.onnx_runner import META_INT8, OnnxModel
from fcnseg.models import build_model
from fcnseg.errors import ConfigError
from fcnseg.quantize import calibration_files, fp32_nodes, split_files
from tests._engine_utils import torch_one_thread  # noqa: F401 (autouse fixture)
from tests._int8_fixtures import shapes_data, trained_ckpt  # noqa: F401 (fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import precision_table  # noqa: E402

pytest.importorskip("onnxruntime.quantization", reason="onnxruntime is not installed (pip install 'fcnseg[onnx]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'fcnseg[onnx]')")


def _measure(model_path, ckpt_model, files) -> tuple[float, float, float]:
    """Independent re-measurement with OnnxModel (the runtime predict uses) vs eager fp32 PyTorch:
    (agreement, agreement where fp32's top-2 margin exceeds 20% of its logit scale, mean rel diff)."""
    runner = OnnxModel(model_path)
    agree = pixels = sure_agree = sure = 0
    rel = []
    for f in files:
        x = normalize(read_image(f))
        with torch.inference_mode():
            ref = ckpt_model(torch.from_numpy(x)).numpy()[0]  # (C, H, W)
        got = runner(x)[0]
        same = got.argmax(0) == ref.argmax(0)
        top2 = np.sort(ref, axis=0)[-2:]
        confident = (top2[1] - top2[0]) > 0.2 * np.abs(ref).max()
        agree, pixels = agree + int(same.sum()), pixels + same.size
        sure_agree, sure = sure_agree + int(same[confident].sum()), sure + int(confident.sum())
        rel.append(float(np.abs(got - ref).mean() / np.abs(ref).max()))
    return agree / pixels, sure_agree / max(sure, 1), float(np.mean(rel))


def test_int8_export_of_a_trained_fcn_agrees_with_fp32(trained_ckpt, shapes_data, tmp_path):
    """A tiny net trained for seconds has many near-ties, so its overall agreement is below the
    99% a trained CamVid model must reach (benchmarks/precision_table.py measures that); here:
    where fp32 is decided by a clear margin, int8 must give the same class."""
    out = tmp_path / "m-int8.onnx"
    res = export_int8(trained_ckpt, out, shapes_data, calib_images=8, check_images=8, min_agreement=0.9)
    assert out.is_file() and res.calibration_images == 8 and res.check_images == 8
    model = OnnxModel(out)
    assert model.precision == "int8" and model.num_classes == 4
    info = json.loads(model.metadata[META_INT8])
    assert info["calibration_images"] == 8 and info["agreement"] == pytest.approx(res.agreement, abs=1e-6)
    # int8 weights: the file is well under the fp32 graph (4 bytes -> 1 byte per weight)
    assert res.int8_bytes < 0.6 * res.fp32_bytes
    # re-measured independently on the val split (images neither calibrated nor checked on)
    ckpt_model = load_model(trained_ckpt)
    agreement, sure, rel = _measure(out, ckpt_model, calibration_files(shapes_data, "val"))
    # u8 activations: a step of 1/255 of each layer's calibrated range, ~15 layers deep: a few
    # percent of the logit scale on average (measured 1-2%), more where clipped outside it.
    assert agreement >= 0.9 and sure >= 0.99 and rel < 0.04, (agreement, sure, rel)


def test_int8_below_the_agreement_threshold_is_refused(trained_ckpt, shapes_data, tmp_path):
    """The refusal itself (a tiny net never reaches 100% agreement): nothing written, the measured
    agreement and the fix in the one-line message."""
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportCheckError, match=r"agrees with fp32 on \d+\.\d\d% .*need 100\.00%.*nothing was "
                                               r"written.*--calib-images.*--format openvino --int8"):
        export_int8(trained_ckpt, out, shapes_data, calib_images=4, check_images=8, min_agreement=1.0)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_calibration_and_check_images_are_disjoint(shapes_data):
    files = calibration_files(shapes_data, "train")
    assert len(files) == 16
    calib, check, notes = split_files(files, 10, 4)
    assert len(calib) == 10 and len(check) == 4 and not set(calib) & set(check) and notes == []
    assert split_files(files, 10, 4) == (calib, check, notes)  # seeded
    calib, check, notes = split_files(files, 20, 4)
    assert len(calib) == 16 and check == calib[:4] and len(notes) == 2


def _graph(name: str, **kwargs):
    """The exported fp32 ONNX graph of a random-weight ``name`` with 4 classes."""
    import onnx

    from fcnseg.export import _export_bytes

    torch.manual_seed(0)
    model = build_model(name, 4, **kwargs).eval()
    return onnx.load_from_string(_export_bytes(model, "torchscript", 17, {})[0]).graph


def test_the_parts_kept_fp32_are_found_by_structure():
    """``fp32_nodes`` finds each part by what it is (op type, group, place in the graph), checked
    here against what the FCN-8s head is: 3 score convs (the 1x1 convs to 4 classes), 3 upsampling
    ConvTransposes, 2 fusion sums, and every node after the first score conv; no backbone conv."""
    g = _graph("fcn8s_small", width=8)
    by_name = {n.name: n for n in g.node}
    head = [by_name[n] for n in fp32_nodes(g, ["head"])]
    convs = [n for n in head if n.op_type == "Conv"]
    assert len(convs) == 3 and all("score" in n.name for n in convs), [n.name for n in convs]
    assert sum(n.op_type == "ConvTranspose" for n in head) == 3
    # the two fusion sums (upsampled scores + cropped skip scores; other Adds are shape arithmetic)
    assert sum(n.op_type == "Add" and any("ConvTranspose" in i for i in n.input) for n in head) == 2
    # after the first score conv, every (transposed) conv is in the head (nodes are topologically sorted)
    first = next(i for i, n in enumerate(g.node) if n.name == convs[0].name)
    assert {n.name for n in g.node[first:] if n.op_type in ("Conv", "ConvTranspose")} <= {n.name for n in head}
    assert [by_name[n].op_type for n in fp32_nodes(g, ["upsampling"])] == ["ConvTranspose"] * 3
    stem = fp32_nodes(g, ["stem"])
    assert stem == ["/backbone/stem/stem.0/Conv"], stem  # the small backbone's first conv
    assert fp32_nodes(g, ["depthwise"]) == []  # the small backbone has no grouped convs
    with pytest.raises(ConfigError, match="unknown part"):
        fp32_nodes(g, ["heads"])


def test_depthwise_convs_are_the_grouped_ones():
    g = _graph("fcn8s_efficientnet_lite0")
    dw = [n for n in g.node if n.name in set(fp32_nodes(g, ["depthwise"]))]
    # EfficientNet-Lite0: one depthwise conv per MBConv block, 16 blocks
    assert len(dw) == 16 and all(next(a.i for a in n.attribute if a.name == "group") > 1 for n in dw)


@pytest.mark.parametrize("name,kwargs", [("unet_small", {"width": 8}), ("fcn8s_efficientnet_lite0", {}),
                                         ("fcn16s_resnet18", {})])
def test_int8_export_covers_unet_and_depthwise_backbones(name, kwargs, shapes_data, tmp_path):
    """Random-weight models (the agreement target is for trained ones): the graph quantises, runs at
    any size, and its logits follow fp32's (correlation), with the measured agreement recorded."""
    torch.manual_seed(0)
    model = build_model(name, 4, **kwargs).eval()
    for m in model.modules():
        if type(m) is torch.nn.Conv2d:
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    ckpt = save_checkpoint(tmp_path / "m.pt", model, class_names=["a", "b", "c", "d"]) or tmp_path / "m.pt"
    out = tmp_path / "q.onnx"
    res = export_int8(ckpt, out, shapes_data, calib_images=6, check_images=4, min_agreement=0.0)
    x = normalize(read_image(calibration_files(shapes_data, "val")[0]))
    got = OnnxModel(out)(x)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
    assert corr > 0.95, corr
    assert 0.0 <= res.agreement <= 1.0


def test_cli_int8_needs_calib_data_and_predict_runs_int8(trained_ckpt, shapes_data, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    assert main(["export", "--checkpoint", str(trained_ckpt), "--out", str(out), "--int8"]) != 0
    assert "--int8 needs --calib-data" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(trained_ckpt), "--out", str(out), "--int8",
                 "--calib-data", str(shapes_data), "--calib-images", "8", "--int8-min-agreement", "0.9"]) == 0
    assert "argmax agreement" in capsys.readouterr().out
    img = calibration_files(shapes_data, "val")[0]
    assert main(["predict", str(img), "--checkpoint", str(out), "--out", str(tmp_path / "p"),
                 "--precision", "int8"]) == 0
    assert (tmp_path / "p" / f"{img.stem}.png").is_file()
    capsys.readouterr()
    assert main(["predict", str(img), "--checkpoint", str(out), "--out", str(tmp_path / "p2"),
                 "--precision", "bf16"]) != 0
    assert "--precision bf16:" in capsys.readouterr().err and not (tmp_path / "p2").exists()


def test_eval_precisions_and_int8_scores_match_a_manual_count(trained_ckpt, shapes_data, tmp_path):
    kw = dict(workers=0, device="cpu", progress=False)
    fp32 = run_eval(str(trained_ckpt), str(shapes_data), **kw)
    assert fp32["precision"] == "fp32" and "precision_choice" not in fp32
    bf16 = run_eval(str(trained_ckpt), str(shapes_data), precision="bf16", **kw)
    assert bf16["precision"] == "bf16"
    assert abs(bf16["pixel_acc"] - fp32["pixel_acc"]) < 0.02
    q = export_int8(trained_ckpt, tmp_path / "q.onnx", shapes_data, calib_images=8, min_agreement=0.9)
    int8 = run_eval(str(q.path), str(shapes_data), precision="int8", **kw)
    assert int8["precision"] == "int8"
    # independent count: OnnxModel on each val image, pixels equal to the mask (255 ignored)
    ds = VOCSegmentation(shapes_data, "val")
    runner = OnnxModel(q.path)
    right = total = 0
    for i in range(len(ds)):
        pred = runner(normalize(read_image(ds.image_path(i))))[0].argmax(0)
        mask = read_mask(ds.mask_path(i), 4)
        keep = mask != 255
        right, total = right + int((pred[keep] == mask[keep]).sum()), total + int(keep.sum())
    assert int8["pixel_acc"] == pytest.approx(right / total, abs=1e-9)
    # (int8's accuracy against fp32 is judged on a trained CamVid model: benchmarks/precision_table.py)


def test_precision_table_script_scores_every_path_against_the_same_fp32_run(trained_ckpt, shapes_data, tmp_path,
                                                                           capsys):
    """benchmarks/precision_table.py (its figures are the lead's to run): the fp32 row equals
    `fcnseg eval` on the same images, the fp32 fast path and ONNX agree with it, int8 is scored."""
    out = tmp_path / "t.json"
    assert precision_table.main(["--checkpoint", str(trained_ckpt), "--data", str(shapes_data), "--threads", "1",
                                 "--repeats", "1", "--latency-size", "32x48", "--calib-images", "8",
                                 "--json", str(out), "--paths", ",".join(precision_table.PATHS)]) == 0
    doc = json.loads(out.read_text())
    rows = {r["path"]: r for r in doc["rows"]}
    # The OpenVINO rows run in tests/openvino_cases.py, in a process of their own (see test_openvino.py).
    assert list(rows) == list(precision_table.PATHS)
    ref = run_eval(str(trained_ckpt), str(shapes_data), workers=0, device="cpu", progress=False)
    assert rows["fp32_eager"]["miou"] == pytest.approx(ref["miou"], abs=1e-12)
    assert rows["fp32_eager"]["agreement_vs_fp32"] == 1.0
    assert rows["fp32_fastpath"]["agreement_vs_fp32"] == 1.0 and rows["fp32_onnx"]["agreement_vs_fp32"] >= 0.999
    assert 0.5 < rows["int8_onnx"]["agreement_vs_fp32"] <= 1.0
    assert rows["int8_onnx"]["model_mb"] < 0.6 * rows["fp32_onnx"]["model_mb"]
    assert doc["auto"]["precision"] in ("fp32", "bf16") and "precision auto here" in capsys.readouterr().out
