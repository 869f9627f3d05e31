"""Latency against input size for both geometries: is the cost linear in pixels?

Times square inputs with :func:`fcnseg.bench.bench_scaling` (median of repeats after a
warm-up) for FCN-8s-VGG16 up to 1024^2 and a light model (FCN-8s on the small ResNet)
up to 2048^2, fits ``ms = slope * megapixels + intercept`` per model and geometry (R^2),
writes the numbers to ``benchmarks/scaling.json`` and plots ``benchmarks/scaling.png``.

    python benchmarks/scaling.py                 # ~5-10 minutes on 2 quiet cores
    python benchmarks/scaling.py --quick         # smaller sizes, 2 repeats
    python benchmarks/scaling.py --variant fastpath
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (model, model kwargs, sizes, quick sizes)
RUNS = (
    ("fcn8s_vgg16", {}, [256, 512, 768, 1024], [256, 512]),
    ("fcn8s_small", {"width": 32}, [256, 512, 1024, 1536, 2048], [256, 512, 1024]),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--variant", default="fp32", help="bench variant timed (default fp32: the default path)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per point (default 3; quick 2)")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    p.add_argument("--json", default=str(HERE / "scaling.json"), help="output JSON")
    p.add_argument("--png", default=str(HERE / "scaling.png"), help="output plot")
    args = p.parse_args(argv)

    import torch

    from fcnseg.bench import BenchConfig, bench_scaling
    from fcnseg.bench.timing import environment
    from fcnseg.engine.runtime import resolve_device

    threads = args.threads or len(os.sched_getaffinity(0))
    device = str(resolve_device(args.device))
    repeats = args.repeats or (2 if args.quick else 3)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        for model, kwargs, sizes, quick_sizes in RUNS:
            cfg = BenchConfig(threads=threads, device=device, scaling_model=model, model_kwargs=kwargs,
                              scaling_sizes=quick_sizes if args.quick else sizes, scaling_repeats=repeats,
                              scaling_variant=args.variant)
            print(f"{model} {kwargs or ''}: sizes {cfg.scaling_sizes}, {threads} threads, {args.variant}",
                  flush=True)
            results.append({**bench_scaling(cfg, torch.device(device)), "model_kwargs": kwargs})
    finally:
        torch.set_num_threads(prev)
    out = {"environment": environment(torch.device(device), threads), "runs": results}
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    plot(results, args.png, f"{out['environment']['device_name']}, {threads} threads, {args.variant}")
    for r in results:
        for geometry, g in r["geometries"].items():
            fit = g["fit_ms_vs_megapixels"]
            print(f"  {r['model']:12s} {geometry:6s} {fit['slope']:8.0f} ms/Mpx  intercept {fit['intercept']:7.0f} ms"
                  f"  R^2 {fit['r2']:.4f}")
    print(f"wrote {args.json} and {args.png}")
    return 0


def plot(results: list[dict], path: str, subtitle: str) -> None:
    """One panel per model: median latency (IQR bars) against megapixels, with the fitted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, r in zip(axes[0], results):
        for geometry, g in r["geometries"].items():
            pts = [q for q in g["points"] if "median_ms" in q]
            xs = [q["megapixels"] for q in pts]
            ys = [q["median_ms"] / 1e3 for q in pts]
            err = [q["iqr_ms"] / 2e3 for q in pts]
            line = ax.errorbar(xs, ys, yerr=err, marker="o", linestyle="none", capsize=3, label=geometry)
            fit = g["fit_ms_vs_megapixels"]
            if fit:
                gx = [0.0, max(xs)]
                ax.plot(gx, [(fit["slope"] * x + fit["intercept"]) / 1e3 for x in gx], color=line[0].get_color(),
                        linewidth=1, label=f"{geometry} fit: {fit['slope'] / 1e3:.2f} s/Mpx, R$^2$={fit['r2']:.3f}")
        name = r["model"] + (f" (width {r['model_kwargs']['width']})" if r.get("model_kwargs") else "")
        ax.set_title(name)
        ax.set_xlabel("input megapixels (square inputs)")
        ax.set_ylabel("latency, s (median; bars: IQR)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"FCN latency against input size ({subtitle})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
