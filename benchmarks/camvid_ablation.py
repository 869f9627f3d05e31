"""The paper's two claims on real data, measured on camvid-voc with the CPU recipe:

* skips help: FCN-8s >= FCN-16s >= FCN-32s in val mIoU (same backbone, same budget);
* the ``modern`` geometry (fc6 padded by 3) loses no accuracy against ``caffe`` (conv1 padded
  by 100), while costing less;
* and, for reference, the paper's staged training (32s -> 16s -> 8s, each stage initialised
  from the previous best, a third of the epochs each) against training FCN-8s at once;
* U-Net (``unet``: its decoder concatenates the encoder's maps at every stride) against
  FCN-8s (which sums class scores from strides 8, 16, 32), on the same backbone.

Every variant runs the CPU recipe of ``benchmarks/camvid_cpu.py`` (fcn*_small / unet_small,
width 32, blocks 2,2,3,2, AdamW, median-frequency weights, seed 0) for the SAME number of
epochs, so each sees the same images in the same order and finishes its poly schedule; only
the head (or the geometry) differs. Each best checkpoint is then evaluated by ``fcnseg eval``
on the 101 full-size val images. Budget = epochs, not minutes: a fixed time would hand the
cheaper head more steps, and would make the result depend on what else the machine was doing.

    python benchmarks/camvid_ablation.py --data ../shared/data/camvid-voc --out runs/ablation
    python benchmarks/camvid_ablation.py --data ../shared/data/camvid-voc --out runs/ablation_unet \
        --variants fcn8s,unet --seed 0      # and --seed 1: U-Net against FCN-8s, two seeds

Prints a Markdown table (the one in the README), U-Net's differences to FCN-8s when both ran,
and writes ``OUT/ablation.json`` and the per-class plot ``OUT/ablation.png``.
Each variant's ``last.pt`` is evaluated (``best.pt`` is chosen on val, the split reported).
A variant already in ``OUT/ablation.json`` is not trained again (``--retrain`` forces it).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from camvid_cpu import RECIPE  # noqa: E402  (the one recipe, shared)

VARIANTS = {  # name: (model, geometry, staged)
    "fcn32s": ("fcn32s_small", "modern", False),
    "fcn16s": ("fcn16s_small", "modern", False),
    "fcn8s": ("fcn8s_small", "modern", False),
    "fcn8s_caffe": ("fcn8s_small", "caffe", False),
    # the paper's staged training: 32s -> 16s -> 8s, a third of the epochs each (same total)
    "fcn8s_staged": ("fcn8s_small", "modern", True),
    # U-Net on the same small backbone: the decoder is the only difference to fcn8s
    "unet": ("unet_small", "modern", False),
}


def recipe_for(model: str) -> list[str]:
    args = list(RECIPE)
    args[args.index("--model") + 1] = model
    args[args.index("--val-every") + 1] = "10"
    # The ablation's recorded figures were trained in fp32, before the recipe moved to --amp auto.
    args[args.index("--amp") + 1] = "off"
    return args


def train_command(name: str, data: str, run_dir: Path, epochs: int, seed: int) -> list[str]:
    """The ``fcnseg train`` command of variant ``name``: the recipe, the variant's model,
    geometry and staging, the shared epoch budget and seed."""
    model, geometry, staged = VARIANTS[name]
    stage_args = ["--stages", "32s,16s,8s", "--epochs", str(epochs // 3)] if staged else ["--epochs", str(epochs)]
    return [sys.executable, "-m", "fcnseg.cli", "train", "--data", data, "--out", str(run_dir / "train"),
            *recipe_for(model), "--geometry", geometry, *stage_args, "--seed", str(seed),
            "--overwrite", "--no-progress"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/camvid-voc"))
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--epochs", type=int, default=30, help="the budget, equal for every variant")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=0, help="another seed measures run-to-run spread "
                   "(its runs are stored beside seed 0's as NAME@seedN)")
    p.add_argument("--retrain", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    names = args.variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")

    import torch

    from fcnseg.bench.timing import cpu_info
    from fcnseg.engine.evaluate import run_eval
    from fcnseg.models import build_model, count_flops

    results = {}
    if (out / "ablation.json").is_file():
        results = json.loads((out / "ablation.json").read_text())["variants"]
    for name in names:
        model, geometry, staged = VARIANTS[name]
        key = name if args.seed == 0 else f"{name}@seed{args.seed}"
        run = out / key.replace("@", "_")
        cmd = train_command(name, args.data, run, args.epochs, args.seed)
        final = run / "train" / ("8s" if staged else "")
        if args.retrain or key not in results:
            print(f"[{key}] fcnseg train " + shlex.join(cmd[4:]), flush=True)
            t0 = time.time()
            subprocess.run(cmd, check=True)
            minutes = (time.time() - t0) / 60
            torch.set_num_threads(2)
            # last.pt, not best.pt: best.pt is picked on val, the split reported here
            ev = run_eval(str(final / "last.pt"), args.data, "val", bf=True, out=str(run / "eval"),
                          overwrite=True, progress=False)
            metrics = [json.loads(line) for line in (final / "metrics.jsonl").read_text().splitlines()]
            net = build_model(model, num_classes=len(ev["iou"]), geometry=geometry, width=32, blocks=(2, 2, 3, 2))
            results[key] = {
                "variant": name, "seed": args.seed, "model": model + (" staged 32s>16s>8s" if staged else ""), "geometry": geometry,
                "epochs": args.epochs, "train_minutes": minutes, "checkpoint": "last.pt",
                "host": cpu_info(),
                "command": "fcnseg train " + shlex.join(cmd[4:]),
                "train_images_per_s": metrics[-1].get("images_per_s"),
                "best_epoch": max((m for m in metrics if "val" in m), key=lambda m: m["val"]["miou"])["epoch"],
                "gflops_360x480": count_flops(net, (360, 480)) / 1e9,
                "eval": {k: ev[k] for k in ("miou", "pixel_acc", "mean_acc", "fwiou", "bf", "iou")},
                "class_names": ev["class_names"],
            }
            (out / "ablation.json").write_text(json.dumps({"epochs": args.epochs, "variants": results}, indent=2))
            print(f"[{key}] val mIoU {100 * ev['miou']:.1f} after {minutes:.1f} min", flush=True)

    report(results, args.epochs)
    compare(results, "unet", "fcn8s")
    if results:
        plot(results, out / "ablation.png")
        print(f"\nper-class plot: {out / 'ablation.png'}")
    return 0


def ordered(results: dict) -> list[str]:
    """Keys in VARIANTS order, seed 0 first."""
    order = list(VARIANTS)
    return sorted(results, key=lambda k: (order.index(k.split("@")[0]), results[k].get("seed", 0)))


def report(results: dict, epochs: int) -> None:
    print(f"\ncamvid-voc val (101 full-size images), fcn*_small / unet_small w32, recipe of "
          f"benchmarks/camvid_cpu.py, {epochs} epochs each\n")
    print("| variant | geometry | seed | GFLOPs 360x480 | train min | mIoU | pixel acc | mean acc | fwIoU | BF |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in ordered(results):
        r, e = results[key], results[key]["eval"]
        print(f"| {r['model']} | {r['geometry']} | {r.get('seed', 0)} | {r['gflops_360x480']:.1f} | "
              f"{r['train_minutes']:.1f} | {100 * e['miou']:.1f} | {100 * e['pixel_acc']:.1f} | "
              f"{100 * e['mean_acc']:.1f} | {100 * e['fwiou']:.1f} | {100 * e['bf']:.1f} |")
    by_variant: dict[str, list[float]] = {}
    for key in ordered(results):
        by_variant.setdefault(key.split("@")[0], []).append(100 * results[key]["eval"]["miou"])
    if any(len(v) > 1 for v in by_variant.values()):
        print("\nmIoU over seeds (mean, and spread = max - min)")
        print("| variant | runs | mean mIoU | spread |")
        print("|---|---:|---:|---:|")
        for name, v in by_variant.items():
            spread = f"{max(v) - min(v):.1f}" if len(v) > 1 else "-"
            print(f"| {name} | {len(v)} | {sum(v) / len(v):.1f} | {spread} |")
    if results:
        first = next(iter(results.values()))
        print("\nper-class IoU")
        print("| variant | " + " | ".join(first["class_names"]) + " |")
        print("|---|" + "---:|" * len(first["class_names"]))
        for key in ordered(results):
            print(f"| {key} | " + " | ".join(f"{100 * v:.1f}" for v in results[key]["eval"]["iou"]) + " |")


def compare(results: dict, a: str, b: str) -> None:
    """Variant ``a`` minus variant ``b`` (percentage points), averaged over the seeds both ran:
    the scores, and the IoU of every class (where do ``a``'s skips help, where do they cost?)."""
    def key(name: str, seed: int) -> str:  # as main() stores runs
        return name if seed == 0 else f"{name}@seed{seed}"

    seeds = sorted({int(k.partition("@seed")[2] or 0) for k in results if k.split("@")[0] == a})
    seeds = [s for s in seeds if key(b, s) in results]
    if not seeds:
        return

    def run(name: str, seed: int) -> dict:
        return results[key(name, seed)]

    def mean(name: str, get) -> float:
        return sum(100 * get(run(name, s)) for s in seeds) / len(seeds)

    print(f"\n{a} - {b} (percentage points; mean over seed(s) {', '.join(map(str, seeds))})")
    print(f"| score | {b} | {a} | {a} - {b} |")
    print("|---|---:|---:|---:|")
    rows = [(k, lambda r, k=k: r["eval"][k]) for k in ("miou", "pixel_acc", "mean_acc", "fwiou", "bf")]
    rows += [(f"IoU {c}", lambda r, i=i: r["eval"]["iou"][i]) for i, c in enumerate(run(b, seeds[0])["class_names"])]
    for label, get in rows:
        va, vb = mean(a, get), mean(b, get)
        print(f"| {label} | {vb:.1f} | {va:.1f} | {va - vb:+.1f} |")
    ga, gb = (run(n, seeds[0])["gflops_360x480"] for n in (a, b))
    ta, tb = (sum(run(n, s)["train_minutes"] for s in seeds) / len(seeds) for n in (a, b))
    print(f"| GFLOPs 360x480 | {gb:.1f} | {ga:.1f} | {ga / gb:.2f}x |")
    print(f"| train min | {tb:.1f} | {ta:.1f} | {ta / tb:.2f}x |")


def plot(results: dict, path: Path) -> None:
    """Per-class IoU bars, one colour per variant: where do the skips help?"""
    import numpy as np

    from fcnseg.plots import new_figure, save_figure

    names = [n for n in VARIANTS if n in results]  # seed 0 only: one bar per variant
    classes = results[names[0]]["class_names"] + ["mIoU"]
    x = np.arange(len(classes))
    width = 0.8 / len(names)
    fig = new_figure(12, 4)
    ax = fig.add_subplot()
    for i, n in enumerate(names):
        e = results[n]["eval"]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [100 * v for v in e["iou"]] + [100 * e["miou"]],
               width, label=f"{results[n]['model']} ({results[n]['geometry']})")
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("val IoU (%)")
    ax.set_title(f"camvid-voc val, {results[names[0]]['epochs']} epochs each, same recipe and seed")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
