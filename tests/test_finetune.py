"""Fine-tuning options: backbone learning-rate multiplier, backbone freezing and BatchNorm mode,
colour jitter, their defaults with and without --backbone-weights, and a run that uses them."""
from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import pytest
import torch

from _engine_utils import (TINY_ARGS, free_port, subprocess_env, tiny_cfg,
                           torch_one_thread)  # noqa: F401 (autouse fixture)
from fcnseg.checkpoint import load_checkpoint
from fcnseg.data.transforms import ColorJitter, RandomCrop, RandomHorizontalFlip, train_transforms
from fcnseg.engine.config import FINETUNE_BEFORE_OPTIONS, FINETUNE_DEFAULTS, resolve
from fcnseg.engine.finetune import set_backbone_mode
from fcnseg.engine.optim import PolyLR, build_optimizer
from fcnseg.engine.run_dir import load_run_config
from fcnseg.engine.train import add_cli_arguments, config_from_args, train
from fcnseg.errors import ConfigError
from fcnseg.models import build_model


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    """fcn8s_small (width 8) with random score layers: they start at zero, which would stop
    every gradient from reaching the backbone."""
    torch.manual_seed(seed)
    model = build_model("fcn8s_small", num_classes=3, width=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("score"):
                p.normal_(0, 0.1)
    return model


def _loss(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    y = torch.randint(0, 3, (2, 32, 32), generator=g)
    return torch.nn.functional.cross_entropy(model(x), y)


def _backbone_ids(model: torch.nn.Module) -> set[int]:
    return {id(p) for p in model.backbone.parameters()}


# ----------------------------------------------------------------------------- optimizer

def test_backbone_lr_mult_scales_exactly_the_backbone_step():
    model = _tiny_model()
    lr, mult = 0.1, 0.1
    opt = build_optimizer(model, "sgd", lr, weight_decay=0.0, momentum=0.0, backbone_lr_mult=mult)
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert sorted(map(id, grouped)) == sorted(map(id, trainable))  # each trainable parameter once
    backbone = _backbone_ids(model)
    for g in opt.param_groups:
        in_backbone = {id(p) in backbone for p in g["params"]}
        assert len(in_backbone) == 1  # no group mixes backbone and head
        assert g["lr"] == pytest.approx(lr * mult if in_backbone == {True} else lr)
    assert len(opt.param_groups) == 4  # backbone/head x decay/no-decay

    before = {id(p): p.detach().clone() for p in trainable}
    _loss(model).backward()
    grads = {id(p): p.grad.detach().clone() for p in trainable}
    opt.step()
    n_backbone_moved = 0
    for p in trainable:
        step = lr * (mult if id(p) in backbone else 1.0)
        # plain SGD (no momentum, no decay): p_new = p - step * grad
        torch.testing.assert_close(p.detach(), before[id(p)] - step * grads[id(p)], rtol=0, atol=1e-7)
        n_backbone_moved += id(p) in backbone and bool((grads[id(p)] != 0).any())
    assert n_backbone_moved > 0


def test_poly_schedule_keeps_the_backbone_ratio():
    model = _tiny_model()
    opt = build_optimizer(model, "adamw", 1e-3, weight_decay=0.01, backbone_lr_mult=0.25)
    sched = PolyLR(opt, total_steps=10, power=0.9, warmup_steps=2)
    backbone = _backbone_ids(model)
    for _ in range(6):
        opt.step()
        sched.step()
        head = [g["lr"] for g in opt.param_groups if id(g["params"][0]) not in backbone]
        body = [g["lr"] for g in opt.param_groups if id(g["params"][0]) in backbone]
        assert len(set(head)) == 1 and len(set(body)) == 1
        assert body[0] == pytest.approx(0.25 * head[0], rel=1e-12)
    # the last group is the head's, at the base rate: what the training log reports
    assert opt.param_groups[-1]["lr"] == head[0]


def test_multiplier_one_keeps_the_two_groups_of_earlier_versions():
    """A last.pt from before the multiplier existed holds a two-group optimizer state."""
    model = _tiny_model()
    opt = build_optimizer(model, "sgd", 0.01, weight_decay=5e-4)
    assert [(g["weight_decay"], g["lr"]) for g in opt.param_groups] == [(5e-4, 0.01), (0.0, 0.01)]
    assert all(p.ndim > 1 for p in opt.param_groups[0]["params"])
    assert all(p.ndim <= 1 for p in opt.param_groups[1]["params"])


# ----------------------------------------------------------------------------- freezing and BatchNorm

def test_frozen_backbone_gets_no_update_and_frozen_bn_keeps_its_statistics():
    model = _tiny_model()
    opt = build_optimizer(model, "sgd", 0.1, weight_decay=5e-4, momentum=0.9)  # built unfrozen, as in training
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    backbone_state = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("score")}

    model.train()
    set_backbone_mode(model, frozen=True, bn="frozen")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(not m.training for m in bns)
    opt.zero_grad()
    _loss(model).backward()
    opt.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    for k, v in model.backbone.state_dict().items():  # weights and running statistics
        assert torch.equal(v, backbone_state[k]), k
    assert any(not torch.equal(p, head_before[n]) for n, p in model.named_parameters() if n in head_before)

    # Released, BatchNorm in training mode: the same step now moves both (the control).
    model.train()
    set_backbone_mode(model, frozen=False, bn="train")
    assert all(p.requires_grad for p in model.backbone.parameters()) and all(m.training for m in bns)
    opt.zero_grad()
    _loss(model).backward()
    opt.step()
    assert not torch.equal(bns[0].running_mean, backbone_state[_bn_key(model, bns[0]) + ".running_mean"])
    assert any(not torch.equal(p, backbone_state[n]) for n, p in model.backbone.named_parameters())


def _bn_key(model: torch.nn.Module, bn: torch.nn.Module) -> str:
    return next(n for n, m in model.backbone.named_modules() if m is bn)


def test_frozen_bn_keeps_statistics_but_learns_its_affine():
    model = _tiny_model()
    opt = build_optimizer(model, "sgd", 0.1, weight_decay=0.0, momentum=0.0)
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    mean, weight = bn.running_mean.clone(), bn.weight.detach().clone()
    model.train()
    set_backbone_mode(model, frozen=False, bn="frozen")
    _loss(model).backward()
    opt.step()
    assert torch.equal(bn.running_mean, mean) and bn.num_batches_tracked.item() == 0
    assert not torch.equal(bn.weight.detach(), weight)


# ----------------------------------------------------------------------------- colour jitter

def _jitter_reference(image: np.ndarray, factors: list[float]) -> np.ndarray:
    """Brightness, contrast, saturation from their definitions: brightness blends towards black,
    contrast towards the mean grey level (rounded), saturation towards each pixel's grey
    (ITU-R 601 luma, rounded); as in Pillow, each step is clipped and truncated to uint8."""
    def grey(a: np.ndarray) -> np.ndarray:  # Pillow's "L": (19595 R + 38470 G + 7471 B + 2^15) >> 16
        return (a.astype(np.int64) @ np.array([19595, 38470, 7471]) + 32768) >> 16

    def blend(towards: np.ndarray | float, a: np.ndarray, f: float) -> np.ndarray:
        return np.clip(np.trunc(towards + f * (a - np.asarray(towards, np.float64))), 0, 255)

    b, c, s = factors
    x = blend(0.0, image.astype(np.float64), b)
    x = blend(math.floor(grey(x).mean() + 0.5), x, c)
    return blend(grey(x)[..., None].astype(np.float64), x, s)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_color_jitter_matches_its_definition_and_leaves_the_mask(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, size=(24, 32), dtype=np.uint8)
    strength = 0.4
    out, out_mask = ColorJitter(strength, torch.Generator().manual_seed(seed))(image, mask)
    g = torch.Generator().manual_seed(seed)  # the same three draws
    factors = [1 - strength + 2 * strength * float(torch.rand((), generator=g)) for _ in range(3)]
    ref = _jitter_reference(image, factors)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(out_mask, mask)
    diff = np.abs(out.astype(np.float64) - ref)
    # Pillow blends in float32: a value within float32 rounding of an integer may truncate to
    # the other side (one level, then carried through the later steps); nearly all are exact.
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean(), factors)
    assert np.abs(out.astype(np.int64) - image).mean() > 5  # it did change the image


def test_color_jitter_off_and_bad_strength():
    image = np.full((4, 5, 3), 77, np.uint8)
    mask = np.zeros((4, 5), np.uint8)
    out, _ = ColorJitter(0.0)(image, mask)
    assert np.array_equal(out, image)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        ColorJitter(1.0)


def test_train_transforms_place_the_jitter_after_the_crop():
    kinds = [type(t) for t in train_transforms(16, color_jitter=0.2).transforms]
    assert ColorJitter in kinds and kinds.index(RandomCrop) < kinds.index(ColorJitter) < kinds.index(
        RandomHorizontalFlip)
    assert ColorJitter not in [type(t) for t in train_transforms(16).transforms]


# ----------------------------------------------------------------------------- configuration

@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "backbone.pt"
    torch.save(_tiny_model(seed=5).backbone.state_dict(), path)
    return path


def test_defaults_depend_on_backbone_weights(synthetic_voc, tmp_path, weights_file):
    scratch = resolve(tiny_cfg(synthetic_voc, tmp_path / "o"))
    assert (scratch.backbone_lr_mult, scratch.bn, scratch.color_jitter, scratch.freeze_backbone_epochs) == (
        1.0, "train", 0.0, 0)
    pre = resolve(tiny_cfg(synthetic_voc, tmp_path / "o", backbone_weights=str(weights_file)))
    assert {k: getattr(pre, k) for k in FINETUNE_DEFAULTS} == FINETUNE_DEFAULTS == {
        "backbone_lr_mult": 0.1, "bn": "train", "color_jitter": 0.2}
    given = resolve(tiny_cfg(synthetic_voc, tmp_path / "o", backbone_weights=str(weights_file),
                             backbone_lr_mult=0.5, bn="frozen", color_jitter=0.0, freeze_backbone_epochs=3))
    assert (given.backbone_lr_mult, given.bn, given.color_jitter, given.freeze_backbone_epochs) == (
        0.5, "frozen", 0.0, 3)
    # "imagenet" is resolved by the backbone, not looked up as a file
    assert resolve(tiny_cfg(synthetic_voc, tmp_path / "o", backbone_weights="imagenet")).backbone_lr_mult == 0.1


@pytest.mark.parametrize("setting,message", [
    ({"bn": "sometimes"}, "--bn"),
    ({"backbone_lr_mult": -0.1}, "--backbone-lr-mult"),
    ({"backbone_lr_mult": float("nan")}, "--backbone-lr-mult"),
    ({"color_jitter": 1.0}, "--color-jitter"),
    ({"freeze_backbone_epochs": -1}, "--freeze-backbone-epochs"),
])
def test_bad_fine_tuning_settings_are_one_clear_error(synthetic_voc, tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        resolve(tiny_cfg(synthetic_voc, tmp_path / "o", **setting))


def test_command_line_options(synthetic_voc, tmp_path):
    p = argparse.ArgumentParser()
    add_cli_arguments(p)
    args = p.parse_args(["--data", str(synthetic_voc), "--out", str(tmp_path / "o"), "--backbone-lr-mult", "0.3",
                         "--bn", "frozen", "--freeze-backbone-epochs", "2", "--color-jitter", "0.1",
                         "--backbone-weights", "imagenet"])
    cfg = config_from_args(args)
    assert (cfg.backbone_lr_mult, cfg.bn, cfg.freeze_backbone_epochs, cfg.color_jitter, cfg.backbone_weights) == (
        0.3, "frozen", 2, 0.1, "imagenet")


def test_resuming_a_run_from_before_the_options_keeps_its_training(tmp_path, synthetic_voc, weights_file):
    """An older run's config.json has no fine-tuning keys: it trained with one rate for all,
    BatchNorm in training mode and no jitter, and must resume so even with --backbone-weights."""
    run = tmp_path / "old"
    run.mkdir()
    cfg = tiny_cfg(synthetic_voc, run, backbone_weights=str(weights_file)).to_dict()
    for key in FINETUNE_BEFORE_OPTIONS:
        cfg.pop(key)
    (run / "config.json").write_text(json.dumps({"config": cfg}))
    resumed = resolve(load_run_config(run, resume=True))
    assert {k: getattr(resumed, k) for k in FINETUNE_BEFORE_OPTIONS} == FINETUNE_BEFORE_OPTIONS


# ----------------------------------------------------------------------------- a training run

def test_training_freezes_then_releases_the_backbone_across_a_resume(synthetic_voc, tmp_path, weights_file):
    """Epoch 1 with the backbone frozen (BN frozen too): last.pt's backbone equals the weights
    file exactly while the head learned. Resumed for a second, unfrozen epoch: the backbone's
    weights move but its BatchNorm statistics stay those of the file (--bn frozen)."""
    out = tmp_path / "ft"
    file_state = torch.load(weights_file, weights_only=True)
    train(tiny_cfg(synthetic_voc, out, epochs=1, backbone_weights=str(weights_file), freeze_backbone_epochs=1,
                   bn="frozen", deterministic=True))
    last = load_checkpoint(out / "last.pt")
    backbone = {k[len("backbone."):]: v for k, v in last["state_dict"].items() if k.startswith("backbone.")}
    assert backbone.keys() == file_state.keys()
    for k, v in backbone.items():
        assert torch.equal(v, file_state[k]), k
    assert any(v.abs().sum() > 0 for k, v in last["state_dict"].items() if k.startswith("score"))  # zero at init
    assert len(last["optimizer"]["param_groups"]) == 4  # backbone at 0.1x (the pretrained default)
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["backbone_lr_mult"], config["color_jitter"]) == (0.1, 0.2)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps[0]["lr"] == pytest.approx(0.01)  # the base rate is logged, not the backbone's

    train(load_run_config(out, resume=True, epochs=2))
    last = load_checkpoint(out / "last.pt")
    assert last["step"] == 2 * len(steps)
    moved = [k for k, v in last["state_dict"].items()
             if k.startswith("backbone.") and not torch.equal(v, file_state[k[len("backbone."):]])]
    assert moved and all(not k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in moved)
    assert any(k.endswith(".weight") for k in moved)


@pytest.mark.slow
def test_two_process_training_with_a_frozen_backbone(tmp_path, weights_file):
    """DDP: parameters without gradients in the frozen epoch must neither hang nor fail the reducer."""
    import subprocess

    from fcnseg.data.synthetic import make_synthetic_voc

    # 4 train images: 2 per rank, one full batch of 2 (a batch of 1 would leave BatchNorm one value
    # per channel at stride 32)
    data = make_synthetic_voc(tmp_path / "data", n_train=4, n_val=2, size=(32, 48), num_classes=4, seed=3)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "fcnseg.cli", "train", "--data", str(data),
           "--out", str(out), "--epochs", "2", "--freeze-backbone-epochs", "1", "--backbone-weights",
           str(weights_file), *TINY_ARGS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=subprocess_env(threads=1))
    assert r.returncode == 0, r.stderr[-3000:]
    state = load_checkpoint(out / "last.pt")["state_dict"]
    file_state = torch.load(weights_file, weights_only=True)
    assert any(not torch.equal(state["backbone." + k], v) for k, v in file_state.items() if k.endswith("weight"))


# ----------------------------------------------------------------------------- --scale

def _scales(cfg) -> list:
    """The RandomScale ranges in the training set's transforms of a Trainer built from ``cfg``."""
    from fcnseg.data.transforms import RandomScale
    from fcnseg.engine.trainer import Trainer

    trainer = Trainer(resolve(cfg), torch.device("cpu"))
    trainer.setup()  # builds the datasets (and the model: tiny here)
    return [(t.lo, t.hi) for t in trainer.train_ds.transforms.transforms if isinstance(t, RandomScale)]


@pytest.mark.parametrize("flag,expected", [(None, [(0.5, 2.0)]), ("0.75,1.5", [(0.75, 1.5)]), ("none", [])])
def test_scale_option_reaches_the_training_transforms(synthetic_voc, tmp_path, flag, expected):
    """--scale sets the random rescaling range of the training crops (default 0.5-2, the paper's
    augmentation); --scale none trains on unscaled crops. Checked on the Trainer's dataset."""
    p = argparse.ArgumentParser()
    add_cli_arguments(p)
    argv = ["--data", str(synthetic_voc), "--out", str(tmp_path / "o"), *TINY_ARGS]
    if flag is not None:
        argv += ["--scale", flag]
    cfg = config_from_args(p.parse_args(argv))
    assert _scales(cfg) == expected


@pytest.mark.parametrize("flag", ["2,1", "0,1", "1", "a,b", "1,nan"])
def test_bad_scale_is_a_usage_error(synthetic_voc, tmp_path, flag, capsys):
    p = argparse.ArgumentParser()
    add_cli_arguments(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--data", str(synthetic_voc), "--out", str(tmp_path / "o"), "--scale", flag])
    assert "--scale" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--scale"):  # the Python API checks it too
        resolve(tiny_cfg(synthetic_voc, tmp_path / "o", scale=[2.0, 1.0]))
