"""Training: run directory contents, schedule, loss, class weights, staged training, time budget."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _engine_utils import read_jsonl, tiny_cfg, torch_one_thread  # noqa: F401 (autouse fixture)
from fcnseg.checkpoint import load_checkpoint
from fcnseg.engine.config import TrainConfig, resolve
from fcnseg.engine.losses import median_frequency_weights, pixel_frequencies, segmentation_loss
from fcnseg.engine.optim import PolyLR
from fcnseg.engine.train import train
from fcnseg.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_run(synthetic_voc, tmp_path_factory):
    """One 2-epoch run (6 train images, batch 2 -> 3 steps per epoch), shared by several tests."""
    out = tmp_path_factory.mktemp("run") / "r"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: set up before the autouse one-thread fixture
    try:
        train(tiny_cfg(synthetic_voc, out, epochs=2, deterministic=True, class_weights="median-freq"))
    finally:
        torch.set_num_threads(threads)
    return out


def test_run_directory_contents(tiny_run, synthetic_voc):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "metrics.jsonl", "steps.jsonl", "train_curve.png", "confusion_matrix.png",
            "best.pt", "last.pt", "summary.json"} <= names

    doc = json.loads((tiny_run / "config.json").read_text())
    assert doc["config"]["model"] == "fcn8s_small" and doc["config"]["lr"] == 0.01  # resolved default
    env = doc["environment"]
    import fcnseg

    assert env["fcnseg_version"] == fcnseg.__version__
    assert env["torch_version"] == torch.__version__ and env["torch_threads"] >= 1 and env["device"] == "cpu"
    assert "git" in env  # describe string, or None outside a checkout
    assert doc["resolved"]["steps_per_epoch"] == 3 and doc["resolved"]["total_steps"] == 6
    assert len(doc["resolved"]["class_weights"]) == 4

    rows = read_jsonl(tiny_run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and [r["step"] for r in rows] == [3, 6]
    for r in rows:
        assert math.isfinite(r["train_loss"]) and r["images_per_s"] > 0 and r["lr"] > 0
        v = r["val"]
        assert set(v) >= {"pixel_acc", "mean_acc", "miou", "fwiou", "iou"} and len(v["iou"]) == 4
        assert 0 <= v["pixel_acc"] <= 1

    steps = read_jsonl(tiny_run / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert steps[0]["loss"] == pytest.approx(math.log(4), rel=1e-5)  # zero-initialised scores: uniform

    best, last = load_checkpoint(tiny_run / "best.pt"), load_checkpoint(tiny_run / "last.pt")
    assert best["class_names"] == ["background", "circle", "rectangle", "triangle"]
    assert len(best["palette"]) == 256 and best["metrics"]["miou"] == max(r["val"]["miou"] for r in rows)
    assert last["step"] == 6 and last["completed"] is True and last["progress"]["epoch"] == 2
    assert {"optimizer", "scheduler", "rng", "config"} <= set(last)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["completed"] and summary["best_miou"] == pytest.approx(best["best_miou"])


def test_poly_schedule_in_steps_log(tiny_run):
    steps = read_jsonl(tiny_run / "steps.jsonl")
    for s in steps:  # lr used at step s (1-based): base * (1 - (s-1)/T)^0.9
        assert s["lr"] == pytest.approx(0.01 * (1 - (s["step"] - 1) / 6) ** 0.9, rel=1e-9)


def test_poly_lr_warmup():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = PolyLR(opt, total_steps=10, power=0.9, warmup_steps=4, warmup_factor=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [(1 - s / 10) ** 0.9 * ((0.1 + 0.9 * s / 4) if s < 4 else 1.0) for s in range(10)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(0.1) and opt.param_groups[0]["lr"] == 0.0
    # the state dict holds only plain values: loadable with weights_only
    assert all(isinstance(v, (int, float, list, bool, type(None))) for v in sched.state_dict().values())


def test_segmentation_loss_matches_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, 9)
    target = torch.randint(0, 5, (2, 7, 9))
    target[0, :3] = 255
    w = torch.rand(5) + 0.5
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=255)
    assert torch.allclose(segmentation_loss(logits, target, w), ref, rtol=1e-6)
    assert torch.allclose(segmentation_loss(logits, target), F.cross_entropy(logits, target, ignore_index=255))
    # all pixels ignored: 0, not NaN (which the divergence check would flag)
    empty = torch.full((1, 7, 9), 255)
    assert segmentation_loss(logits[:1], empty).item() == 0.0


def test_median_frequency_weights():
    # image 0: 6 px of class 0, 2 px of class 1; image 1: 4 px class 0, 4 px class 2 (+ ignored)
    masks = [np.array([[0, 0, 0, 0], [0, 0, 1, 1]]), np.array([[0, 0, 0, 0], [2, 2, 2, 2]]),
             np.array([[255, 255]])]
    cp, ip = pixel_frequencies(lambda i: masks[i], 3, num_classes=4)
    assert cp.tolist() == [10, 2, 4, 0] and ip.tolist() == [16, 8, 8, 0]
    w = median_frequency_weights(cp, ip)
    freq = np.array([10 / 16, 2 / 8, 4 / 8])
    med = np.median(freq)
    assert w[:3] == pytest.approx(med / freq) and w[3] == 0.0  # absent class: 0


def test_config_validation_messages(synthetic_voc, tmp_path):
    with pytest.raises(ConfigError, match="unknown --model 'fcn8s_smal'.*fcn8s_small"):
        resolve(tiny_cfg(synthetic_voc, tmp_path / "o", model="fcn8s_smal"))
    with pytest.raises(ConfigError, match="--stages"):
        resolve(tiny_cfg(synthetic_voc, tmp_path / "o", stages=["32s", "4s"]))
    with pytest.raises(ConfigError, match="--class-weights"):
        resolve(tiny_cfg(synthetic_voc, tmp_path / "o", class_weights="nope.txt"))
    with pytest.raises(ConfigError, match="--amp fp16 needs a CUDA GPU"):
        train(tiny_cfg(synthetic_voc, tmp_path / "o", amp="fp16", epochs=1))


def test_staged_training_and_upgrade_init(synthetic_voc, tmp_path):
    out = tmp_path / "staged"
    train(tiny_cfg(synthetic_voc, out, stages=["16s", "32s"], iters=2, class_weights="none"))
    c16 = json.loads((out / "16s" / "config.json").read_text())["config"]
    assert c16["model"] == "fcn16s_small" and c16["init"] == str(out / "32s" / "best.pt")
    assert load_checkpoint(out / "16s" / "best.pt")["model"]["name"] == "fcn16s_small"
    assert set(json.loads((out / "summary.json").read_text())["stages"]) == {"32s", "16s"}

    # --init upgrades a 32s checkpoint to 8s, copying the shared weights
    from fcnseg.engine.model_setup import load_init as _load_init

    ck = load_checkpoint(out / "32s" / "best.pt")
    m8 = _load_init(str(out / "32s" / "best.pt"), "fcn8s_small", 4)
    assert m8.fcn_config["name"] == "fcn8s_small"
    sd = m8.state_dict()
    shared = [k for k in ck["state_dict"] if k.startswith("backbone.") or k == "score_fr.weight"]
    assert shared and all(torch.equal(sd[k], ck["state_dict"][k]) for k in shared)


def test_staged_time_budget_then_resume(synthetic_voc, tmp_path):
    from fcnseg.engine.run_dir import load_run_config

    out = tmp_path / "staged"
    train(tiny_cfg(synthetic_voc, out, stages=["32s", "16s"], iters=2, max_minutes=1e-4))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is False and list(summary["stages"]) == ["32s"]  # 16s never started
    assert not (out / "16s").exists()
    train(load_run_config(out, resume=True))  # the budget is per invocation: none now
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is True and list(summary["stages"]) == ["32s", "16s"]
    assert [s["step"] for s in read_jsonl(out / "32s" / "steps.jsonl")] == [1, 2]


def test_max_minutes_stops_cleanly_with_evaluated_best(synthetic_voc, tmp_path, capsys):
    out = tmp_path / "budget"
    # 1e-4 min: the budget is exhausted at the first step; the run must still end with a
    # validated best.pt, final metrics, and a resumable last.pt.
    train(tiny_cfg(synthetic_voc, out, epochs=5, max_minutes=1e-4))
    assert "time budget of 0.0001 min reached at step 1/15" in capsys.readouterr().out
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["partial"] and rows[0]["step"] == 1 and "miou" in rows[0]["val"]
    best = load_checkpoint(out / "best.pt")
    assert best["step"] == 1 and best["metrics"]["miou"] == rows[0]["val"]["miou"]
    last = load_checkpoint(out / "last.pt")
    assert last["completed"] is False and last["progress"]["batch_in_epoch"] == 1
    assert json.loads((out / "summary.json").read_text())["stopped"] == "time"


def test_bf16_channels_last_and_class_weight_file(synthetic_voc, tmp_path):
    wfile = tmp_path / "w.txt"
    wfile.write_text("1 2 2 2\n")
    out = tmp_path / "bf16"
    train(tiny_cfg(synthetic_voc, out, iters=2, amp="bf16", channels_last=True, class_weights=str(wfile),
                   optimizer="adamw", warmup_iters=1, bf=True))
    doc = json.loads((out / "config.json").read_text())
    assert doc["resolved"]["amp_dtype"] == "bfloat16" and doc["resolved"]["class_weights"] == [1, 2, 2, 2]
    assert doc["config"]["lr"] == 1e-4 and doc["config"]["weight_decay"] == 1e-2
    row = read_jsonl(out / "metrics.jsonl")[-1]
    assert 0.0 <= row["val"]["bf"] <= 1.0
    assert all(math.isfinite(s["loss"]) for s in read_jsonl(out / "steps.jsonl"))


def test_train_config_roundtrip():
    cfg = TrainConfig(data="d", out="o", model_kwargs={"width": 8}, stages=["32s"])
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown training setting"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})
