"""DDP: sharding without duplicates, and 2-process CPU (gloo) runs that must equal 1 process exactly."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from _engine_utils import (TINY_ARGS, free_port, random_head_checkpoint, subprocess_env,
                           torch_one_thread)  # noqa: F401 (autouse fixture)
from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.data.datasets import open_dataset
from fcnseg.data.transforms import eval_transforms
from fcnseg.engine.distributed import DistInfo, ShardSampler, init_distributed, is_main_process, shard_bounds
from fcnseg.engine.evaluate import evaluate, make_eval_loader
from fcnseg.engine.sampling import ResumableSampler


@pytest.fixture(scope="module")
def odd_voc(tmp_path_factory):
    """5 val images: two ranks get uneven shards (3 + 2)."""
    from fcnseg.data.synthetic import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("odd_voc"), n_train=4, n_val=5, size=(32, 48),
                              num_classes=4, seed=3)


def _torchrun(*args: str, timeout: float = 240):
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "fcnseg.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=subprocess_env(threads=1))


def _single_process_eval(ckpt, data):
    ds = open_dataset(data, "val", transforms=eval_transforms())
    model = model_from_checkpoint(ckpt, num_classes=ds.num_classes)
    return evaluate(model, make_eval_loader(ds, batch_size=1, workers=0, device=torch.device("cpu")),
                    ds.num_classes, "cpu", bf=True)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_and_cover_without_padding(world):
    for n in range(0, 12):
        shards = [list(ShardSampler(n, rank=r, world_size=world)) for r in range(world)]
        flat = [i for s in shards for i in s]
        assert flat == list(range(n))  # disjoint, ordered, complete, no repeats
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert [len(s) for s in shards] == [b - a for a, b in (shard_bounds(n, r, world) for r in range(world))]


def test_resumable_sampler_shards_and_skips():
    full = [list(ResumableSampler(10, seed=5, rank=r, world_size=2)) for r in range(2)]
    idx = [i for shard in full for i, _ in shard]
    assert sorted(idx) == list(range(10))  # train shards partition the data (10 % 2 == 0: no padding)
    s = ResumableSampler(10, seed=5, rank=0, world_size=2)
    s.set_epoch(0, start=2)
    assert list(s) == full[0][2:] and len(s) == 3  # resume mid-epoch: same items, same sample seeds
    s.set_epoch(1)
    assert list(s) != full[0]  # a new order each epoch


def test_single_process_defaults():
    assert init_distributed("cpu") == DistInfo() and is_main_process()


def test_two_process_eval_equals_single_process(odd_voc, tmp_path):
    ckpt = random_head_checkpoint(tmp_path / "ck.pt", num_classes=4, seed=2)
    r = _torchrun("eval", "--checkpoint", str(ckpt), "--data", str(odd_voc), "--json", "--bf", "--workers", "0",
                  "--device", "cpu", "--amp", "off")
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = json.loads(r.stdout)  # printed once, by rank 0 only
    single = _single_process_eval(ckpt, odd_voc)
    assert ddp["num_images"] == single["num_images"] == 5
    assert ddp["confusion_matrix"] == single["confusion_matrix"]  # exactly: each image counted once
    assert np.count_nonzero(single["confusion_matrix"]) >= 4
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
        assert ddp[key] == single[key]
    assert ddp["bf"] == pytest.approx(single["bf"], abs=1e-12)


def test_two_process_training(odd_voc, tmp_path):
    out = tmp_path / "ddp"
    r = _torchrun("train", "--data", str(odd_voc), "--out", str(out), "--epochs", "1", "--deterministic",
                  *TINY_ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("finished:") == 1  # only the main process prints
    doc = json.loads((out / "config.json").read_text())
    # 4 train images over 2 ranks with batch 2: one step per epoch, 2 images per rank
    assert doc["resolved"]["world_size"] == 2 and doc["resolved"]["steps_per_epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    best = load_checkpoint(out / "best.pt")
    # the sharded, all-reduced validation inside training equals a 1-process evaluation
    assert best["metrics"]["confusion_matrix"] == _single_process_eval(out / "best.pt", odd_voc)["confusion_matrix"]
    last = load_checkpoint(out / "last.pt")
    assert last["world_size"] == 2 and len(last["rng"]) == 2  # every rank's RNG state for resume
