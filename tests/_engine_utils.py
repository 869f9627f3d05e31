"""Helpers shared by the engine tests (train / evaluate / distributed / reliability).

Everything is tiny: ``fcn8s_small`` with width 8, 32x32 crops, batch 2, no workers,
fp32 on the CPU, so a training step takes a few milliseconds.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fcnseg.engine.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]

TINY = dict(model="fcn8s_small", model_kwargs={"width": 8}, crop_size=32, batch_size=2, workers=0,
            amp="off", device="cpu", progress=False)
TINY_ARGS = ["--model", "fcn8s_small", "--model-arg", "width=8", "--crop-size", "32", "--batch-size", "2",
             "--workers", "0", "--amp", "off", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def torch_one_thread():
    """One torch thread in the test process: on 2 shared cores, OpenMP's second thread mostly
    spins waiting (a tiny step takes ~4x longer with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(data: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), **{**TINY, **overrides})


def subprocess_env(threads: int = 1) -> dict[str, str]:
    """Environment for child processes: one thread each (2 shared cores), src importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fcnseg.cli", *args]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=timeout, env=subprocess_env())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_head_checkpoint(path: Path, num_classes: int = 4, seed: int = 0, name: str = "fcn8s_small") -> Path:
    """A checkpoint whose (normally zero-initialised) score layers are random, so that its
    predictions mix several classes: a confusion matrix with many non-zero cells."""
    from fcnseg.checkpoint import save_checkpoint
    from fcnseg.models import build_model

    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes, width=8)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.startswith("score"):
                p.normal_(0.0, 0.5)
    model.eval()
    save_checkpoint(path, model, class_names=[f"c{i}" for i in range(num_classes)],
                    palette=[[i, i, i] for i in range(256)], epoch=0, step=0)
    return path


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
