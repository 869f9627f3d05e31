"""Readable tables of a bench result (what ``fcnseg bench`` prints).

A pure function over the JSON-ready result of :func:`fcnseg.bench.run.run_bench`, so it can be
re-run on a saved ``--json`` file.
"""
from __future__ import annotations


def format_tables(result: dict) -> str:
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
    lines += ["", "Peak RSS per phase (MB" + ("" if all(p.get("phase_reset") for p in result["peak_rss"])
                                              else "; where unresettable: process peak so far") + "): "
              + ", ".join(f"{p['after']}: {p.get('phase_peak_mb', p['self_mb']):.0f}" for p in result["peak_rss"])]
    if result.get("auto_precision"):
        lines += [f"--precision auto: {result['auto_precision']['inference']['reason']}",
                  f"--amp auto: {result['auto_precision']['training']['reason']}"]
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
