"""Evaluation: one confusion matrix over the split, the CLI, the report plots."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from _engine_utils import random_head_checkpoint, torch_one_thread  # noqa: F401 (autouse fixture)
from fcnseg.checkpoint import model_from_checkpoint
from fcnseg.data.datasets import open_dataset
from fcnseg.data.transforms import eval_transforms
from fcnseg.engine.evaluate import evaluate, make_eval_loader, run_eval
from fcnseg.errors import CheckpointError
from fcnseg.metrics import BoundaryF1


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_head_checkpoint(tmp_path_factory.mktemp("ck") / "random.pt", num_classes=4, seed=1)


def _manual_confusion(model, ds, n):
    """Reference: image by image, argmax, bincount over labelled pixels."""
    cm = np.zeros((n, n), dtype=np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            pred = model(x[None]).argmax(1)[0]
            keep = y != 255
            cm += np.bincount((y[keep] * n + pred[keep]).numpy(), minlength=n * n).reshape(n, n)
    return cm


def test_evaluate_equals_manual_confusion_matrix(synthetic_voc, ckpt):
    ds = open_dataset(synthetic_voc, "val", transforms=eval_transforms())
    model = model_from_checkpoint(ckpt, num_classes=4).eval()
    ref = _manual_confusion(model, ds, 4)
    assert (ref > 0).sum() >= 4  # the random head predicts several classes: a real test

    res = evaluate(model, make_eval_loader(ds, batch_size=1, workers=0, device=torch.device("cpu")), 4, "cpu")
    cm = np.array(res["confusion_matrix"])
    assert (cm == ref).all() and res["num_images"] == len(ds)
    # every score derives from that one matrix
    tp, gt, pr = np.diag(ref), ref.sum(1), ref.sum(0)
    iou = tp / (gt + pr - tp)
    assert res["pixel_acc"] == pytest.approx(tp.sum() / ref.sum())
    assert res["iou"] == pytest.approx(list(iou))
    assert res["miou"] == pytest.approx(np.nanmean(iou))
    assert res["mean_acc"] == pytest.approx(np.nanmean(np.where(gt > 0, tp / np.maximum(gt, 1), np.nan)))
    assert res["fwiou"] == pytest.approx(((gt / gt.sum()) * np.nan_to_num(iou)).sum())

    # batched (pad_collate) evaluation: the same matrix, cell for cell (same-size images, so no
    # padding changes the network's context), and the BF score of the same per-image predictions
    res2 = evaluate(model, make_eval_loader(ds, batch_size=2, workers=0, device=torch.device("cpu")), 4, "cpu",
                    bf=True)
    np.testing.assert_array_equal(np.array(res2["confusion_matrix"]), ref)
    bf = BoundaryF1(4)  # checked against a brute-force BF in test_metrics
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            bf.update(model(x[None]).argmax(1)[0], y)
    expected_bf = bf.compute()
    assert res2["bf"] == pytest.approx(expected_bf["bf"], abs=1e-12)
    np.testing.assert_allclose(res2["bf_per_class"], expected_bf["bf_per_class"], atol=1e-12)
    assert 0.0 < res2["bf"] < 1.0  # a random head: some boundaries right, some wrong


def test_eval_cli_json_table_and_files(synthetic_voc, ckpt, tmp_path, capsys, monkeypatch):
    from fcnseg.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    out = tmp_path / "ev"
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(synthetic_voc), "--json", "--out", str(out),
               "--workers", "0", "--device", "cpu", "--amp", "off"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) >= {"pixel_acc", "mean_acc", "iou", "acc", "miou", "fwiou", "confusion_matrix"}
    model = model_from_checkpoint(ckpt, num_classes=4).eval()
    val = _manual_confusion(model, open_dataset(synthetic_voc, "val", transforms=eval_transforms()), 4)
    assert printed["confusion_matrix"] == val.tolist() and printed["split"] == "val"
    assert printed["class_names"] == ["background", "circle", "rectangle", "triangle"]
    assert json.loads((out / "eval.json").read_text())["confusion_matrix"] == printed["confusion_matrix"]
    with Image.open(out / "confusion_matrix.png") as im:
        assert im.format == "PNG" and im.width > 200

    rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(synthetic_voc), "--workers", "0",
               "--device", "cpu", "--bf"])
    text = capsys.readouterr().out
    assert rc == 0 and "rectangle" in text and "mIoU" in text and "BF" in text and "fwIoU" in text

    # --split: the 6 train images instead of the 3 val ones
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(synthetic_voc), "--split", "train", "--json",
               "--workers", "0", "--device", "cpu", "--amp", "off"])
    printed = json.loads(capsys.readouterr().out)
    train = _manual_confusion(model, open_dataset(synthetic_voc, "train", transforms=eval_transforms()), 4)
    assert rc == 0 and printed["split"] == "train" and printed["num_images"] == 6
    assert printed["confusion_matrix"] == train.tolist() != val.tolist()


def test_eval_refuses_checkpoint_for_other_class_count(synthetic_voc, tmp_path):
    other = random_head_checkpoint(tmp_path / "c6.pt", num_classes=6)
    with pytest.raises(CheckpointError, match="checkpoint has 6 classes but the data has 4"):
        run_eval(str(other), str(synthetic_voc), workers=0, device="cpu")


def test_report_plots(tmp_path):
    from fcnseg.plots import plot_confusion_matrix, plot_training_curve

    rows = [{"epoch": 1, "train_loss": 1.0, "val": {"miou": 0.2}},
            {"epoch": 2, "train_loss": 0.5, "val": {"miou": 0.4}}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_training_curve(tmp_path / "m.jsonl", tmp_path / "curve.png")
    with Image.open(png) as im:
        assert im.format == "PNG"
    cm = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    png = plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png")
    with Image.open(png) as im:
        assert im.format == "PNG"
    with pytest.raises(ValueError, match="does not match 2 class names"):
        plot_confusion_matrix(cm, ["a", "b"], tmp_path / "bad.png")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
