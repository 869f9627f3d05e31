"""`fcnseg bench`'s precision rows (auto, int8), CPU flags and auto's choice in the record, and peak RSS
per phase (the high-water mark reset between phases). No timing asserts."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fcnseg.bench import BenchConfig, run_bench
from fcnseg.bench.tables import format_tables
from fcnseg.bench.timing import phase_peak_rss_mb, reset_phase_peak
from fcnseg.precision import REPORTED_FLAGS
from tests.test_bench import TINY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_precision  # noqa: E402

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


@pytest.fixture(scope="module")
def result():
    before = torch.get_num_threads()
    try:
        return run_bench(BenchConfig(**{**TINY, "sections": ["inference", "metrics"]},
                                     variants=["fp32", "auto", "int8_onnx"]), log=lambda _m: None)
    finally:
        torch.set_num_threads(before)


def test_auto_row_runs_the_probed_choice_and_is_recorded(result):
    rows = {r["variant"]: r for r in result["inference"] if r["model"] == "fcn8s_small" and r["geometry"] == "modern"}
    auto = rows["auto"]
    assert auto["status"] == "ok"
    # conftest pins auto to fp32 (FCNSEG_PRECISION): the row is the fp32 fast path, exact to float rounding
    assert any("auto chose fp32: forced by FCNSEG_PRECISION=fp32" in n for n in auto["notes"])
    assert auto["precision"] == "fp32"  # the row carries the probe's choice, not a fixed label
    assert auto["agreement_vs_fp32"] == 1.0 and auto["max_abs_diff_vs_fp32"] <= 3e-6 * max(1.0, auto["logit_scale"])
    rec = result["auto_precision"]
    assert rec["inference"]["precision"] == "fp32" and rec["training"]["workload"] == "training"
    assert set(result["environment"]["cpu_flags"]) <= set(REPORTED_FLAGS)
    text = format_tables(result)
    assert "--precision auto: fp32: forced by" in text and "Peak RSS per phase" in text


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime/onnx are not installed (pip install 'fcnseg[onnx]')")
def test_int8_row_is_quantised_and_compared_with_fp32(result):
    row = next(r for r in result["inference"] if r["variant"] == "int8_onnx" and r["geometry"] == "modern")
    assert row["status"] == "ok", row.get("reason")
    assert row["precision"] == "int8" and row["fraction_of_peak"] is None  # never judged as an fp32 row
    # random He-initialised weights (bench's models) on a 32x48 input: int8 follows fp32 coarsely;
    # all-zero or garbage logits would be off by the whole logit scale
    assert 0.5 <= row["agreement_vs_fp32"] <= 1.0
    assert row["max_abs_diff_vs_fp32"] <= 0.5 * row["logit_scale"]


def test_peak_rss_is_per_phase(result):
    rows = result["peak_rss"]
    assert [r["after"] for r in rows][-1] == "metrics"
    assert all(r["phase_reset"] for r in rows)  # Linux: VmHWM resettable
    assert all(0 < r["phase_peak_mb"] <= r["self_mb"] + 1 for r in rows)


def test_phase_peak_resets_after_a_big_allocation():
    if not reset_phase_peak():
        pytest.skip("/proc/self/clear_refs is not writable here")
    big = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MB, touched
    during = phase_peak_rss_mb()
    del big
    assert reset_phase_peak()
    after = phase_peak_rss_mb()
    assert during - after > 150  # the next phase does not inherit the 200 MB peak


def test_train_precision_script_runs_each_combination(capsys):
    """benchmarks/train_precision.py's logic on a tiny net (the lead runs the figures)."""
    assert train_precision.main(["--model", "fcn8s_small", "--model-arg", "width=8", "--crop", "32x48",
                                 "--batch", "2", "--threads", "1", "--warmup", "1", "--repeats", "1",
                                 "--optimizers", "adamw,adamw_foreach,adamw_fused", "--profile", "--rows", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("img/s median") == 6 and "--amp auto here: fp32: forced by" in out
    assert "top ops of one step" in out
