"""Targets of the performance issue, judged PASS/MISS from a bench result.

Pure functions over the JSON-ready result of :func:`fcnseg.bench.run.run_bench`, so they can
be tested on synthetic numbers and re-run on a saved ``--json`` file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

TORCHVISION_NAME = "torchvision_fcn_resnet50"


@dataclass(frozen=True)
class Target:
    """A target of the performance issue: ``value >= threshold`` (or ``<`` when lower is better)."""

    key: str
    description: str
    threshold: float
    higher_is_better: bool = True


TARGETS = (
    Target("fp32_fraction_of_peak", "FCN-8s-VGG16 fp32 360x480 batch 1, 2 threads: fastest fp32 variant's GFLOP/s / "
           "best fp32 matmul GFLOP/s", 0.80),
    Target("bf16_speedup", "bf16 (fp16/bf16 AMP on CUDA) images/s / fp32 images/s, best variant of each", 1.6),
    Target("bf16_agreement", "argmax agreement of that bf16 variant with fp32", 0.99),
    Target("int8_speedup", "int8 (fcnseg export --int8, onnxruntime) images/s / the fp32 fast path's images/s "
           "(issue #11)", 1.8),
    Target("int8_agreement", "argmax agreement of the int8 variant with fp32", 0.99),
    Target("modern_vs_caffe", "caffe-geometry latency / modern-geometry latency, same fp32 variant and input", 1.8),
    Target("loader_vs_train", "data-loader images/s / training-step images/s", 2.0),
    Target("metric_share", "ConfusionMatrix.update time / evaluation time", 0.02, higher_is_better=False),
)
TARGET_CONDITIONS = {"model": "fcn8s_vgg16", "geometry": "modern", "size": [360, 480], "batch": 1, "threads": 2}


def judge_targets(values: dict[str, dict | None]) -> list[dict]:
    """PASS/MISS per target from ``values[key] = {"value": float, "conditions": str, ...}``
    (None or absent: NOT RUN)."""
    rows = []
    for t in TARGETS:
        v = values.get(t.key)
        row = {"key": t.key, "description": t.description, "threshold": t.threshold,
               "comparison": ">=" if t.higher_is_better else "<"}
        if v is None or v.get("value") is None or not math.isfinite(v["value"]):
            row.update(status="NOT RUN", value=None, conditions=(v or {}).get("conditions", "not measured"))
        else:
            ok = v["value"] >= t.threshold if t.higher_is_better else v["value"] < t.threshold
            row.update(status="PASS" if ok else "MISS", value=v["value"], conditions=v.get("conditions", ""))
        rows.append(row)
    return rows


def target_values(result: dict) -> dict[str, dict | None]:
    """Pick the measurements each target is about out of a bench result."""
    values: dict[str, dict | None] = {}
    inf = [r for r in result.get("inference", []) if r.get("status") == "ok"]
    modern = [r for r in inf if r["geometry"] == "modern" and r["model"] != TORCHVISION_NAME]
    exact = [r for r in modern if all(r[k] == v for k, v in TARGET_CONDITIONS.items())]
    group = exact
    if not exact and modern:  # judge the first model/size measured, and say so
        first = (modern[0]["model"], modern[0]["size"], modern[0]["batch"])
        group = [r for r in modern if (r["model"], r["size"], r["batch"]) == first]
    if group:
        g0 = group[0]
        cond = f"{g0['model']} {g0['size'][0]}x{g0['size'][1]} batch {g0['batch']}, {g0['threads']} threads, {g0['device']}"
        if not exact:
            cond += " (the target is stated for fcn8s_vgg16 360x480 batch 1, 2 threads)"
        fp32 = [r for r in group if r["precision"] == "fp32"]
        half = [r for r in group if r["precision"] in ("bf16", "fp16")]
        best32 = max(fp32, key=lambda r: r["images_per_s"], default=None)
        if best32 and best32.get("fraction_of_peak") is not None:
            values["fp32_fraction_of_peak"] = {"value": best32["fraction_of_peak"],
                                               "conditions": f"{cond}; variant {best32['variant']}"}
        best16 = max(half, key=lambda r: r["images_per_s"], default=None)
        if best32 and best16:
            peak = result.get("peak") or {}
            k16, k32 = best16.get("peak_precision"), best32.get("peak_precision")
            ratio = (f"; this machine's {k16}/{k32} matmul peak ratio is "
                     f"{peak[k16]['best_gflop_per_s'] / peak[k32]['best_gflop_per_s']:.2f}"
                     if k16 in peak and k32 in peak else "")
            values["bf16_speedup"] = {"value": best16["images_per_s"] / best32["images_per_s"],
                                      "conditions": f"{cond}; {best16['variant']} vs {best32['variant']}{ratio}"}
            values["bf16_agreement"] = {"value": best16["agreement_vs_fp32"],
                                        "conditions": f"{cond}; {best16['variant']}, input: {best16['input']}"}
        int8 = next((r for r in group if r["precision"] == "int8"), None)
        fast32 = next((r for r in fp32 if r["variant"] == "fastpath"), best32)
        if int8 and fast32:
            values["int8_speedup"] = {"value": int8["images_per_s"] / fast32["images_per_s"],
                                      "conditions": f"{cond}; {int8['variant']} vs {fast32['variant']}"}
            values["int8_agreement"] = {"value": int8["agreement_vs_fp32"],
                                        "conditions": f"{cond}; {int8['variant']}, input: {int8['input']}"}
        caffe = {r["variant"]: r for r in inf if r["geometry"] == "caffe" and r["precision"] == "fp32"
                 and (r["model"], r["size"], r["batch"]) == (g0["model"], g0["size"], g0["batch"])}
        # The same variant in both geometries: the one that runs the modern net fastest.
        pairs = [(r, caffe[r["variant"]]) for r in fp32 if r["variant"] in caffe]
        if pairs:
            mod, caf = min(pairs, key=lambda p: p[0]["latency"]["median_ms"])
            values["modern_vs_caffe"] = {
                "value": caf["latency"]["median_ms"] / mod["latency"]["median_ms"],
                "conditions": f"{cond}; variant {mod['variant']} in both; caffe has "
                              f"{caf['flops'] / mod['flops']:.2f}x the FLOPs"}
    train, loader = result.get("train") or {}, result.get("loader") or {}
    if train.get("status") == "ok" and loader.get("status") == "ok":
        values["loader_vs_train"] = {
            "value": loader["images_per_s"] / train["images_per_s"],
            "conditions": f"{train['model']} crop {train['crop']} batch {train['batch']}; "
                          f"loader {loader['workers']} workers"}
    metrics = result.get("metrics") or {}
    if metrics.get("status") == "ok":
        values["metric_share"] = {"value": metrics["share"],
                                  "conditions": f"{metrics['model']} fp32 eager, {metrics['source']}"}
    return values
