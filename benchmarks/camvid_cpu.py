"""The CPU recipe on camvid-voc: train from scratch on 2 cores within 60 minutes, evaluate,
and measure dense-CRF refinement. Prints the figures recorded in the README.

    python benchmarks/camvid_cpu.py --data ../shared/data/camvid-voc --out runs/camvid_cpu
    python benchmarks/camvid_cpu.py --data ../shared/data/camvid-voc --out runs/camvid_cpu_fp32 --amp off

The training command it runs is the documented recipe (see README); it is also printed. The
recipe trains with ``--amp auto``: bf16 autocast where the run's own measured training step
is faster in bf16 (AVX512-BF16 or AMX hosts), fp32 elsewhere; ``--amp off`` forces fp32 for
the comparison. Time-to-accuracy is read from the in-training validation (every 5 epochs,
all 101 full-size val images): the minutes from launch (set-up and validations included)
until val mIoU first reaches ``--target``. The reported scores are the FINAL weights'
(``last.pt``), evaluated once in fp32; ``best.pt`` is selected on val and is not used.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

RECIPE = [
    "--model", "fcn8s_small", "--model-arg", "width=32", "--model-arg", "blocks=2,2,3,2",
    "--optimizer", "adamw", "--lr", "2e-3", "--warmup-iters", "100",
    "--batch-size", "8", "--crop-size", "288x384", "--class-weights", "median-freq",
    "--channels-last", "--amp", "auto", "--workers", "1", "--val-every", "5",
]


def cpu_flags() -> list[str]:
    """The /proc/cpuinfo flags that decide the precision paths (recorded with every figure)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni")))


def learning_curve(metrics: list[dict], launch: float | None) -> list[tuple]:
    """(minutes from launch, epoch, val mIoU) of each validation row of metrics.jsonl."""
    return [(None if launch is None else (m["time"] - launch) / 60, m["epoch"], m["val"]["miou"])
            for m in metrics if (m.get("val") or {}).get("miou") is not None]


def first_reaching(curve: list[tuple], target: float) -> tuple | None:
    """The first point of ``curve`` at or above ``target`` mIoU (time-to-accuracy), or None."""
    return next((c for c in curve if c[2] >= target), None)


def plot_runs(runs: list[Path], png: Path, target: float) -> int:
    """Val mIoU (in-training validation) against minutes from launch, one line per run."""
    from fcnseg.plots import new_figure, save_figure

    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for run in runs:
        b = json.loads((run / "benchmark.json").read_text())
        minutes, _, miou = zip(*b["curve_minutes_epoch_miou"])
        label = (f"{b['amp_dtype'] or 'fp32'} ({run.name}): final {100 * b['eval']['miou']:.1f}% "
                 f"after {b['train_seconds'] / 60:.1f} min")
        ax.plot(minutes, [100 * v for v in miou], "o-", label=label)
    ax.axhline(100 * target, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("minutes from launch (2 CPU cores)")
    ax.set_ylabel("val mIoU (%), every 5 epochs")
    ax.set_title("camvid-voc CPU recipe (fcn8s_small w32, 85 epochs)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, png)
    print(f"wrote {png}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/camvid-voc"))
    p.add_argument("--out", default="runs/camvid_cpu")
    p.add_argument("--epochs", type=int, default=85)
    p.add_argument("--minutes", type=float, default=50.0, help="training time budget (the target allows 60)")
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16"],
                   help="override the recipe's --amp (off = the fp32 comparison run)")
    p.add_argument("--target", type=float, default=0.55, help="val mIoU for the time-to-accuracy figure")
    p.add_argument("--plot", nargs="+", metavar="RUN", default=None,
                   help="only plot val mIoU against minutes of the given --out folders (their benchmark.json) "
                        "into --plot-png, and exit")
    p.add_argument("--plot-png", default="docs/camvid_cpu_curve.png")
    p.add_argument("--skip-train", action="store_true", help="only evaluate an existing run")
    p.add_argument("--crf-images", type=int, default=None, help="limit the CRF measurement")
    args = p.parse_args()
    if args.plot:
        return plot_runs([Path(r) for r in args.plot], Path(args.plot_png), args.target)
    out = Path(args.out)
    recipe = list(RECIPE)
    recipe[recipe.index("--amp") + 1] = args.amp
    cmd = [sys.executable, "-m", "fcnseg.cli", "train", "--data", args.data, "--out", str(out / "train"),
           *recipe, "--epochs", str(args.epochs), "--max-minutes", str(args.minutes), "--overwrite",
           "--no-progress"]
    print("recipe:", "fcnseg train " + shlex.join(cmd[4:]), flush=True)
    launch_file = out / "launch_time.json"
    if not args.skip_train:
        t0 = time.time()
        out.mkdir(parents=True, exist_ok=True)
        launch_file.write_text(json.dumps({"launch": t0}) + "\n")
        subprocess.run(cmd, check=True)
        print(f"training wall time {(time.time() - t0) / 60:.1f} min", flush=True)
    launch = json.loads(launch_file.read_text())["launch"] if launch_file.exists() else None

    import torch

    from fcnseg.checkpoint import model_from_checkpoint
    from fcnseg.data.datasets import open_dataset
    from fcnseg.engine.evaluate import evaluate_crf_effect, run_eval

    torch.set_num_threads(2)
    final = out / "train" / "last.pt"  # the final weights: nothing selected on val
    ev = run_eval(str(final), args.data, "val", bf=True, out=str(out / "eval"), overwrite=True, progress=False)
    print(f"val (fcnseg eval, 101 full-size images): mIoU {100 * ev['miou']:.1f}  pixel acc "
          f"{100 * ev['pixel_acc']:.1f}  mean acc {100 * ev['mean_acc']:.1f}  fwIoU {100 * ev['fwiou']:.1f}  "
          f"BF {100 * ev['bf']:.1f}", flush=True)
    ds = open_dataset(args.data, "val")
    model = model_from_checkpoint(final, num_classes=ds.num_classes).eval()
    t0 = time.time()
    crf = evaluate_crf_effect(model, ds, max_images=args.crf_images, progress=False)
    crf_s = time.time() - t0
    for k in ("without", "with"):
        r = crf[k]
        print(f"CRF {k:7s}: mIoU {100 * r['miou']:.1f}  pixel acc {100 * r['pixel_acc']:.1f}  BF {100 * r['bf']:.1f}")
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / "train" / "config.json").read_text())
    # (minutes from launch, epoch, in-training val mIoU) per validation
    curve = learning_curve(metrics, launch)
    reached = first_reaching(curve, args.target)
    for minutes, epoch, miou in curve:
        print(f"  epoch {epoch:5.1f}  {'?' if minutes is None else f'{minutes:5.1f}'} min  val mIoU {100 * miou:.1f}")
    print(f"amp: {config['resolved']['amp_choice']} (dtype {config['resolved']['amp_dtype']}); "
          f"val mIoU >= {100 * args.target:.0f}%: " + ("not reached" if reached is None else
          f"at epoch {reached[1]:g}, {reached[0]:.1f} min after launch"), flush=True)
    summary = {"recipe": "fcnseg train " + shlex.join(cmd[4:]), "eval": {k: ev[k] for k in (
        "miou", "pixel_acc", "mean_acc", "fwiou", "bf", "iou")}, "class_names": ev["class_names"],
        "crf": {k: {m: crf[k][m] for m in ("miou", "pixel_acc", "bf")} for k in ("without", "with")},
        "crf_seconds": crf_s, "epochs_done": metrics[-1]["epoch"], "steps": metrics[-1]["step"],
        "train_images_per_s": metrics[-1].get("images_per_s"),
        "weights": "last.pt", "amp_choice": config["resolved"]["amp_choice"],
        "amp_dtype": config["resolved"]["amp_dtype"], "train_seconds": json.loads(
            (out / "train" / "summary.json").read_text())["seconds"],
        "curve_minutes_epoch_miou": curve, "target_miou": args.target,
        "minutes_to_target": None if reached is None else reached[0],
        "environment": config["environment"], "cpu_flags": cpu_flags()}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
