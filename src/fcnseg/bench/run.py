"""The bench driver: run the selected sections, record the environment, judge the targets."""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict
from typing import Callable

import torch

from fcnseg.bench.config import SECTIONS, BenchConfig
from fcnseg.bench.fixtures import torchvision_fcn_resnet50
from fcnseg.bench.sections import (bench_inference, bench_loader, bench_metrics, bench_peak, bench_scaling,
                                   bench_train)
from fcnseg.bench.targets import TORCHVISION_NAME, judge_targets, target_values
from fcnseg.bench.timing import environment, loadavg, peak_rss_mb, phase_peak_rss_mb, reset_phase_peak
from fcnseg.bench.variants import CAFFE_VARIANTS, RUNTIME_VARIANTS, TORCHVISION_VARIANTS, VariantSkipped
from fcnseg.errors import ConfigError
from fcnseg.precision import auto_precision

SCHEMA = "fcnseg-bench/1"


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Run the selected sections; returns the JSON-ready result (also judged against TARGETS)."""
    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown --sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    bad = [v for v in cfg.variants if v not in RUNTIME_VARIANTS]
    if bad:
        raise ConfigError(f"unknown --variants {bad}; choose from {', '.join(RUNTIME_VARIANTS)}")
    device = torch.device(cfg.device)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    prev_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    t_start = time.perf_counter()
    result: dict = {"schema": SCHEMA, "config": asdict(cfg), "environment": environment(device, cfg.threads),
                    "weights": "random, He-initialised convolutions (speed does not depend on values)",
                    "peak_rss": []}

    # Peak RSS per phase: the high-water mark is reset before each phase (VmHWM via clear_refs),
    # so each row is that phase's own peak, not the process-wide maximum.
    reset = [reset_phase_peak()]

    def rss(stage: str) -> None:
        result["peak_rss"].append({"after": stage, "phase_peak_mb": phase_peak_rss_mb(), "phase_reset": reset[0],
                                   **peak_rss_mb()})
        reset[0] = reset_phase_peak()

    result["auto_precision"] = {w: auto_precision(w).as_dict() for w in ("inference", "training")}
    log(f"[auto] CPU flags {' '.join(result['environment']['cpu_flags']) or '-'}; --precision auto: "
        f"{result['auto_precision']['inference']['reason']}; --amp auto: {result['auto_precision']['training']['reason']}")

    try:
        peak = None
        if "peak" in cfg.sections:
            log(f"[peak] torch.mm n in {cfg.peak_sizes}, {cfg.threads} threads")
            peak = result["peak"] = bench_peak(device, cfg.peak_sizes, 1, cfg.repeats, cfg.threads)
            for k, p in peak.items():
                log(f"  {k:5s} n={p['n']}: {p['gflop_per_s']:.1f} GFLOP/s median, {p['best_gflop_per_s']:.1f} best")
            rss("peak")
        if "inference" in cfg.sections:
            log(f"[inference] warm-up {cfg.warmup}, {cfg.repeats} timed runs each")
            records: list[dict] = []
            for name, size in itertools.product(cfg.models, cfg.sizes):
                for geometry in cfg.geometries:
                    vs = cfg.variants if geometry == "modern" else [v for v in cfg.variants if v in CAFFE_VARIANTS]
                    if vs:
                        records += bench_inference(name, size, cfg, device, peak, geometry, vs, log=log)
                        rss(f"inference {name} {geometry} {size[0]}x{size[1]}")
            records += _torchvision_records(cfg, device, peak, log)
            result["inference"] = records
        if "train" in cfg.sections:
            log(f"[train] {cfg.models[0]} crop {cfg.train_crop} batch {cfg.train_batch}")
            result["train"] = bench_train(cfg.models[0], cfg, device)
            log(f"  {result['train']['images_per_s']:.2f} images/s")
            rss("train")
        if "loader" in cfg.sections:
            log(f"[loader] {cfg.data}, {cfg.workers} workers, crop {cfg.train_crop}")
            result["loader"] = bench_loader(cfg, pin_memory=device.type == "cuda")
            log(f"  {result['loader'].get('images_per_s', 0):.1f} images/s" if result["loader"]["status"] == "ok"
                else f"  skipped: {result['loader']['reason']}")
            rss("loader")
        if "metrics" in cfg.sections:
            log(f"[metrics] ConfusionMatrix.update vs forward, {cfg.models[0]}")
            result["metrics"] = bench_metrics(cfg.models[0], cfg, device)
            log(f"  update share {100 * result['metrics']['share']:.2f}% of evaluation time")
            rss("metrics")
        if "scaling" in cfg.sections:
            log(f"[scaling] {cfg.scaling_model} {cfg.scaling_variant}, sizes {cfg.scaling_sizes}")
            result["scaling"] = bench_scaling(cfg, device, log)
            rss("scaling")
    finally:
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_benchmark
    result["targets"] = judge_targets(target_values(result))
    result["environment"]["loadavg_1m_end"] = loadavg()
    result["elapsed_s"] = time.perf_counter() - t_start
    return result


def _torchvision_records(cfg: BenchConfig, device: torch.device, peak: dict | None,
                         log: Callable[[str], None]) -> list[dict]:
    """torchvision fcn_resnet50 beside ours, on CUDA only (never imported on CPU)."""
    base = {"model": TORCHVISION_NAME, "geometry": "modern", "size": list(cfg.sizes[0]), "batch": cfg.batch,
            "threads": cfg.threads, "device": str(device), "variant": "-"}
    if device.type != "cuda":
        return [{**base, "status": "skipped",
                 "reason": "the torchvision comparison runs on CUDA only; torchvision is not imported on CPU"}]
    try:
        tv = torchvision_fcn_resnet50(cfg.num_classes)
    except VariantSkipped as e:
        log(f"  {TORCHVISION_NAME}: skipped: {e}")
        return [{**base, "status": "skipped", "reason": str(e)}]
    variants = [v for v in cfg.variants if v in TORCHVISION_VARIANTS]
    return [r for size in cfg.sizes
            for r in bench_inference(TORCHVISION_NAME, size, cfg, device, peak, "modern", variants,
                                     model=tv, log=log)]
