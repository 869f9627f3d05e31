"""`--amp auto` for training: the same measured decision as `--precision auto` (training probe),
recorded in config.json, and kept by `--resume` even when a new measurement would differ."""
from __future__ import annotations

import json

import pytest
import torch

from fcnseg import precision as P
from fcnseg.checkpoint import load_checkpoint
from fcnseg.engine.run_dir import load_run_config
from fcnseg.engine.runtime import amp_from_name, amp_name, resolve_amp
from fcnseg.engine.train import train
from fcnseg.errors import ConfigError
from tests._engine_utils import tiny_cfg, torch_one_thread  # noqa: F401 (autouse fixture)

CPU = torch.device("cpu")


def test_amp_auto_on_cpu_follows_the_training_probe(monkeypatch):
    monkeypatch.delenv(P.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(P, "_CACHE", {})
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    seen = []
    monkeypatch.setattr(P, "probe_times", lambda w, model=None, size=None: seen.append(w) or {"fp32": 1.4, "bf16": 1.0})
    assert resolve_amp("auto", CPU) is torch.bfloat16
    assert seen == ["training"]
    monkeypatch.setattr(P, "_CACHE", {})
    monkeypatch.setattr(P, "probe_times", lambda w, model=None, size=None: {"fp32": 1.0, "bf16": 1.05})
    assert resolve_amp("auto", CPU) is None
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2"}))  # no candidate: never bf16
    monkeypatch.setattr(P, "_CACHE", {})
    assert resolve_amp("auto", CPU) is None
    assert resolve_amp("auto", CPU, recorded="bfloat16") is torch.bfloat16  # a resumed run's record wins
    assert resolve_amp("off", CPU, recorded="bfloat16") is None  # an explicit flag is explicit


def test_amp_names_round_trip():
    for dt in (torch.bfloat16, torch.float16, None):
        assert amp_from_name(amp_name(dt)) is dt
    with pytest.raises(ConfigError, match="recorded amp dtype 'int8'"):
        amp_from_name("int8")


def test_resumed_run_keeps_the_dtype_it_started_with(synthetic_voc, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(P.ENV_OVERRIDE, "bf16")  # as if the probe had measured bf16 faster
    train(tiny_cfg(synthetic_voc, out, amp="auto", iters=3, max_minutes=1e-4))
    first = json.loads((out / "config.json").read_text())["resolved"]
    assert first["amp_dtype"] == "bfloat16" and "forced by FCNSEG_PRECISION=bf16" in first["amp_choice"]
    ck = load_checkpoint(out / "last.pt")
    assert ck["amp_dtype"] == "bfloat16" and ck["step"] < 3
    monkeypatch.setenv(P.ENV_OVERRIDE, "fp32")  # a new measurement now says fp32 ...
    train(load_run_config(out, resume=True))
    second = json.loads((out / "config.json").read_text())["resolved"]
    assert second["amp_dtype"] == "bfloat16"  # ... but the run continues in the dtype it started in
    assert "kept on resume" in second["amp_choice"]
    assert load_checkpoint(out / "last.pt")["step"] == 3


def test_fresh_run_records_autos_reason(synthetic_voc, tmp_path, monkeypatch):
    monkeypatch.setenv(P.ENV_OVERRIDE, "fp32")
    out = tmp_path / "run"
    train(tiny_cfg(synthetic_voc, out, amp="auto", iters=1))
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["amp_dtype"] is None and resolved["amp_choice"] == "--amp auto: fp32: forced by FCNSEG_PRECISION=fp32"


def test_training_probes_at_its_own_crop(synthetic_voc, tmp_path, monkeypatch):
    """`--amp auto` measures the step the run will repeat: its crop size and batch, not a small
    stand-in (EfficientNet-Lite0 gained 0.74x from bf16 at 96x128 x 2, 1.35x at 288x384 x 8). The probe
    runs once (the reason recorded in config.json reuses the cached measurement) and says where."""
    monkeypatch.delenv(P.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(P, "_CACHE", {})
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    sizes = []
    monkeypatch.setattr(P, "probe_times",
                        lambda w, model=None, size=None, batch=None: sizes.append((w, size, batch)) or {"fp32": 1.3, "bf16": 1.0})
    out = tmp_path / "run"
    train(tiny_cfg(synthetic_voc, out, amp="auto", iters=1, crop_size=[24, 40], batch_size=3))
    assert sizes == [("training", (24, 40), 3)]
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["amp_dtype"] == "bfloat16"
    assert resolved["amp_choice"].startswith("--amp auto: bf16: 1.30x faster than fp32 in the training probe at 24x40, batch 3")
