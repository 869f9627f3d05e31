"""CLI flags that no other test reached, each through argparse and checked for its EFFECT
(what the run recorded and did), not only for a zero exit code. Tiny data, fcn8s_small w8."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from _engine_utils import random_head_checkpoint, read_jsonl
from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.cli import build_parser, main
from fcnseg.models import build_model

COMMON = ["--model", "fcn8s_small", "--model-arg", "width=8", "--amp", "off", "--device", "cpu",
          "--workers", "0", "--no-progress", "--batch-size", "2"]


def test_train_optimizer_geometry_crop_and_split_flags(synthetic_voc, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(synthetic_voc), "--out", str(out), *COMMON, "--epochs", "2",
               "--geometry", "caffe", "--crop-size", "24x40",
               "--train-split", "val", "--val-split", "train",  # swapped: 3 train / 6 val images
               "--optimizer", "sgd", "--lr", "0.01", "--warmup-iters", "0",
               "--weight-decay", "0.001", "--momentum", "0.8", "--poly-power", "0.5"])
    assert rc == 0
    assert "3 train / 6 val images" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["geometry"], cfg["crop_size"], cfg["train_split"], cfg["val_split"]) == ("caffe", [24, 40], "val", "train")
    ckpt = load_checkpoint(out / "last.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert {g["momentum"] for g in groups} == {0.8}
    assert {g["weight_decay"] for g in groups} <= {0.001, 0.0}  # (biases/BN may be exempt)
    assert 0.001 in {g["weight_decay"] for g in groups}
    # poly schedule with power 0.5 over 2 epochs x 1 step (3 images in batches of 2: the
    # one-image batch is left out, see test_a_last_batch_of_one_image_is_left_out)
    steps = read_jsonl(out / "steps.jsonl")
    total = len(steps)
    assert total == 2
    for i, row in enumerate(steps):
        assert row["lr"] == pytest.approx(0.01 * (1 - i / total) ** 0.5, rel=1e-9), (i, row["lr"])
    model = model_from_checkpoint(ckpt)
    assert model.fcn_config["geometry"] == "caffe"
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.padding == (100, 100)  # the caffe geometry's pad of 100


def test_train_backbone_weights_file_is_loaded(synthetic_voc, tmp_path):
    torch.manual_seed(5)
    donor = build_model("fcn8s_small", num_classes=4, width=8)
    weights = tmp_path / "backbone.pt"
    torch.save(donor.backbone.state_dict(), weights)
    out = tmp_path / "run"
    assert main(["train", "--data", str(synthetic_voc), "--out", str(out), *COMMON, "--epochs", "1",
                 "--backbone-weights", str(weights), "--optimizer", "sgd", "--lr", "1e-12", "--momentum", "0",
                 "--weight-decay", "0", "--crop-size", "32"]) == 0
    trained = model_from_checkpoint(load_checkpoint(out / "last.pt"))
    mine, theirs = trained.backbone.state_dict(), donor.backbone.state_dict()
    convs = [k for k in theirs if k.endswith("weight") and theirs[k].dim() == 4]
    # lr 1e-12 for one epoch: the file's weights to ~1e-12 (a fresh init differs by ~0.1)
    assert convs and all(torch.allclose(mine[k], theirs[k], rtol=0, atol=1e-8) for k in convs)
    fresh = build_model("fcn8s_small", num_classes=4, width=8).backbone.state_dict()
    assert all((fresh[k] - theirs[k]).abs().max() > 1e-2 for k in convs)


def test_train_sbd_adds_its_images(synthetic_voc, tmp_path, capsys):
    scipy_io = pytest.importorskip("scipy.io")
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "img").mkdir()
    rng = np.random.default_rng(0)
    for id_ in ("s0", "s1"):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(sbd / "img" / f"{id_}.jpg")
        scipy_io.savemat(sbd / "cls" / f"{id_}.mat",
                         {"GTcls": {"Segmentation": rng.integers(0, 4, (32, 48)).astype(np.uint8)}})
    (sbd / "train.txt").write_text("s0\n")
    (sbd / "val.txt").write_text("s1\n")
    out = tmp_path / "run"
    assert main(["train", "--data", str(synthetic_voc), "--out", str(out), *COMMON, "--iters", "1",
                 "--crop-size", "32", "--sbd", str(tmp_path / "benchmark_RELEASE")]) == 0
    assert "8 train / 3 val images" in capsys.readouterr().out  # 6 VOC + 2 SBD
    assert json.loads((out / "config.json").read_text())["config"]["sbd"] == str(tmp_path / "benchmark_RELEASE")


def test_export_exporter_flag(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    ckpt = random_head_checkpoint(tmp_path / "c.pt", num_classes=4)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--exporter", "torchscript"]) == 0
    assert "torchscript exporter" in capsys.readouterr().out
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_bench_quick_changes_the_configuration(monkeypatch):
    from fcnseg.bench.cli import config_from_args

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    parser = build_parser(all_commands=True)
    full = config_from_args(parser.parse_args(["bench", "--device", "cpu"]))
    quick = config_from_args(parser.parse_args(["bench", "--device", "cpu", "--quick"]))
    assert (full.repeats, full.warmup, full.scaling_sizes) == (5, 2, [256, 512, 1024])
    assert (quick.repeats, quick.warmup, quick.scaling_sizes) == (3, 1, [256, 512])
    assert len(quick.variants) < len(full.variants)


def test_a_last_batch_of_one_image_is_left_out(synthetic_voc, tmp_path, capsys):
    """5 images in batches of 2 with 32x32 crops: fcn8s_small's stride-32 map is 1x1, so a
    one-image batch would be one value per channel for its BatchNorm ("Expected more than 1 value
    per channel when training"). The last one-image batch of each epoch is left out instead."""
    ids = (synthetic_voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[:5]
    split = tmp_path / "five.txt"
    split.write_text("".join(f"{i}\n" for i in ids))
    out = tmp_path / "run"
    assert main(["train", "--data", str(synthetic_voc), "--out", str(out), *COMMON, "--epochs", "2",
                 "--crop-size", "32", "--train-split", str(split)]) == 0
    assert "the last one-image batch of each epoch is left out" in capsys.readouterr().out
    steps = read_jsonl(out / "steps.jsonl")
    assert [r["epoch"] for r in steps] == [1, 1, 2, 2]  # 2 full batches per epoch
