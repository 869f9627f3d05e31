"""DataLoader workers default to what the machine has (usable CPUs - 1), the same rule in
train, eval and bench; no PyTorch "excessive worker" warning on a small machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from _engine_utils import cli_cmd, subprocess_env
from fcnseg.engine import workers as W


@pytest.mark.parametrize("cpus, expected", [(1, 0), (2, 1), (4, 3), (16, 8), (64, 8)])
def test_default_workers_rule(monkeypatch, cpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert W.usable_cpus() == cpus
    assert W.default_workers() == expected  # CPUs minus the main process, at most 8
    assert W.resolve_workers(None) == expected and W.resolve_workers(3) == 3


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_train_on_two_cpus_uses_one_worker_without_warning(synthetic_voc, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs")
    two = set(cpus[:2])  # the run sees a 2-core machine, as the project's VM is
    res = subprocess.run(cli_cmd("train", "--data", str(synthetic_voc), "--out", str(tmp_path / "run"),
                                 "--epochs", "1", "--model", "fcn8s_small", "--model-arg", "width=8",
                                 "--crop-size", "32", "--batch-size", "2", "--amp", "off", "--device", "cpu",
                                 "--no-progress"),  # no --workers: the default
                         capture_output=True, text=True, timeout=300, env=subprocess_env(),
                         preexec_fn=lambda: os.sched_setaffinity(0, two))
    assert res.returncode == 0, res.stderr
    assert "worker" not in (res.stdout + res.stderr).lower(), res.stderr  # "excessive worker" warning
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["workers"] == 1  # 2 CPUs - 1 for the main process


def test_eval_and_bench_default_to_the_same_rule(synthetic_voc, monkeypatch):
    import fcnseg.engine.evaluate as E
    from fcnseg.bench import BenchConfig
    from fcnseg.cli import build_parser
    from fcnseg.engine.config import TrainConfig

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    parser = build_parser(all_commands=True)
    for argv in (["eval", "--checkpoint", "c.pt", "--data", "d"], ["bench"]):
        assert parser.parse_args(argv).workers is None  # resolved by resolve_workers(None)

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(3)), raising=False)  # a 3-CPU machine
    assert TrainConfig(data="d", out="o").workers == 2 and BenchConfig().workers == 2

    seen = {}

    def loader_spy(ds, *, batch_size, workers, device, persistent=False):
        seen["workers"] = workers
        raise KeyboardInterrupt  # stop before any evaluation

    monkeypatch.setattr(E, "make_eval_loader", loader_spy)
    monkeypatch.setattr(E, "load_checkpoint", lambda path: {"config": {}})
    monkeypatch.setattr(E, "model_from_checkpoint", lambda *a, **k: torch.nn.Identity())
    with pytest.raises(KeyboardInterrupt):
        E.run_eval("c.pt", str(synthetic_voc), "val", device="cpu")  # workers not given
    assert seen["workers"] == 2
