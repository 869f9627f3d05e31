"""Targets of the performance issue (PASS/MISS) and the readable report of a bench result.

Pure functions over the JSON-ready result of :func:`fcnseg.bench.run_bench`, so they can
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


def format_report(result: dict) -> str:
    """Readable tables of a bench result."""
    env, cfg = result["environment"], result["config"]
    lines = [f"fcnseg bench: torch {env['torch']}, {env['device']} ({env['device_name']}), "
             f"{cfg['threads']} threads, 1-min load average {_fmt(env.get('loadavg_1m'))} at start, "
             f"{_fmt(env.get('loadavg_1m_end'))} at end",
             "CPU flags: " + (", ".join(f"{k}={'yes' if v else 'no'}" for k, v in env['cpu']['flags'].items())
                              or "unknown")]
    if "peak" in result:
        lines += ["", "Matmul peak (torch.mm n x n, median of repeats; best in brackets):"]
        lines += [f"  {k:5s} n={p['n']:5d}  {p['gflop_per_s']:8.1f} GFLOP/s  [{p['best_gflop_per_s']:.1f}]"
                  for k, p in result["peak"].items()]
    if result.get("inference"):
        lines += ["", "Inference (median latency over repeats after warm-up; IQR in brackets; "
                      "%peak = GFLOP/s / best matmul GFLOP/s of the same precision):",
                  f"  {'model':22s} {'geom':6s} {'size':>9s} {'b':>2s} {'variant':16s} {'ms':>9s} {'[IQR]':>8s} "
                  f"{'img/s':>7s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'%peak':>6s} {'agree%':>7s} {'cpu%':>5s} {'setup s':>7s}"]
        for r in result["inference"]:
            head = f"  {r['model']:22s} {r['geometry']:6s} {r['size'][0]:>4d}x{r['size'][1]:<4d} {r['batch']:>2d} {r['variant']:16s}"
            if r["status"] != "ok":
                lines.append(f"{head} skipped: {r['reason']}")
                continue
            lat, frac = r["latency"], r.get("fraction_of_peak")
            util = lat.get("cpu_util")
            lines.append(f"{head} {lat['median_ms']:9.1f} {'[' + format(lat['iqr_ms'], '.1f') + ']':>8s} "
                         f"{r['images_per_s']:7.2f} {r['flops'] / 1e9:7.4g} {r['gflop_per_s']:8.4g} "
                         f"{(format(100 * frac, '.1f') if frac is not None else '-'):>6s} "
                         f"{100 * r['agreement_vs_fp32']:7.3f} {(format(100 * util, '.0f') if util else '-'):>5s} "
                         f"{r['setup_s']:7.1f}")
        lines.append("  (cpu% = process CPU time / (wall time x threads): well below 100 means other "
                     "processes took the cores and wall times are pessimistic)")
    tr = result.get("train")
    if tr:
        lines += ["", f"Training: {tr['model']} crop {tr['crop']} batch {tr['batch']} fp32: "
                      f"{tr['step']['median_ms']:.0f} ms/step [IQR {tr['step']['iqr_ms']:.0f}], "
                      f"{tr['images_per_s']:.2f} images/s"]
    ld = result.get("loader")
    if ld:
        lines += ["", (f"Loader: {ld['workers']} workers, crop {ld['crop']}, batch {ld['batch']}: "
                       f"{ld['images_per_s']:.1f} images/s ({ld['chunk']['repeats']} chunks of "
                       f"{ld['images_per_chunk']} images, IQR {ld['chunk']['iqr_ms']:.0f} ms/chunk)")
                  if ld["status"] == "ok" else f"Loader: skipped: {ld['reason']}"]
    mt = result.get("metrics")
    if mt:
        lines += ["", f"Metrics: ConfusionMatrix.update {mt['update_total_ms']:.1f} ms vs forward "
                      f"{mt['forward_total_ms']:.0f} ms over {mt['source']}: {100 * mt['share']:.2f}% of evaluation"]
    sc = result.get("scaling")
    if sc:
        lines += ["", f"Scaling: {sc['model']} {sc['variant']} batch 1, square inputs:"]
        for geometry, g in sc["geometries"].items():
            pts = ", ".join(f"{p['size']}: {p['median_ms']:.0f} ms" for p in g["points"] if "median_ms" in p)
            fit = g["fit_ms_vs_megapixels"]
            lines.append(f"  {geometry:6s} {pts}" + (f"; {fit['slope']:.0f} ms/Mpx + {fit['intercept']:.0f} ms, "
                                                     f"R^2 {fit['r2']:.4f}" if fit else ""))
    lines += ["", "Peak RSS (MB): " + ", ".join(f"{p['after']}: {p['self_mb']:.0f}" for p in result["peak_rss"])]
    if result.get("targets"):
        lines += ["", "Targets:"]
        for t in result["targets"]:
            val = "-" if t["value"] is None else f"{t['value']:.3f}"
            lines.append(f"  {t['status']:7s} {t['key']:22s} {val:>8s} {t['comparison']} {t['threshold']:<5g} "
                         f"{t['description']} [{t['conditions']}]")
    lines.append(f"\nelapsed {result.get('elapsed_s', 0):.0f} s")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"
