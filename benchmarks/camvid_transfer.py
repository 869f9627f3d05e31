"""Transfer learning on camvid-voc: an ImageNet EfficientNet-Lite0 FCN-8s against the same
recipe from scratch, with every setting chosen WITHOUT looking at val.

Two stages:

``select``: camvid-voc's train split holds three driving sequences (0001TP: 62 frames,
0006R0: 101, 0016E5: 204; val is 101 later frames of 0016E5). The candidates train on
0006R0 + 0016E5 (305 images) and are scored on the held-out sequence 0001TP (62 images):
a different street, so the choice rewards settings that generalise, and val is never read.
Each candidate changes one setting of the base recipe; each is scored by the mIoU of its
FINAL weights (no checkpoint picked by a score).

``final``: the chosen recipe on the whole train split (367), pretrained and from scratch
with identical flags except ``--backbone-weights``, the same epochs and the same time cap;
each run's final weights (``last.pt``) are evaluated once on the 101 full-size val images
(``fcnseg eval --bf``). ``best.pt`` is not used for the figures: it is selected on val.

    python benchmarks/camvid_transfer.py select --data ../shared/data/camvid-voc --out runs/transfer_select
    python benchmarks/camvid_transfer.py final  --data ../shared/data/camvid-voc --out runs/transfer

Prints Markdown tables and writes ``OUT/select.json`` / ``OUT/final.json``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

HOLDOUT_SEQUENCE = "0001TP"

# The recipe shared by every run; the candidates below override single settings.
BASE = {
    "--model": "fcn8s_efficientnet_lite0",
    "--optimizer": "adamw", "--lr": "2e-3", "--warmup-iters": "100",
    "--batch-size": "8", "--crop-size": "288x384", "--class-weights": "median-freq",
    "--backbone-lr-mult": "0.1", "--bn": "train", "--color-jitter": "0.2",
    "--amp": "bf16", "--workers": "1", "--seed": "0",
}
FLAGS = ["--channels-last", "--no-progress", "--overwrite"]

CANDIDATES = {  # name: overrides of BASE (None = drop the flag)
    "base": {},
    "lr_mult_1": {"--backbone-lr-mult": "1.0"},
    "bn_frozen": {"--bn": "frozen"},
    "no_jitter": {"--color-jitter": "0"},
    "lr_1e-3": {"--lr": "1e-3"},
    "no_weights": {"--class-weights": "none"},
    "scale_0.75-1.5": {"--scale": "0.75,1.5"},
    "no_weights+scale_0.75-1.5": {"--class-weights": "none", "--scale": "0.75,1.5"},
    "scratch": {"--backbone-weights": None},
}


def holdout_view(data: Path, out: Path) -> Path:
    """A VOC-layout view of ``data`` (symlinks) whose splits are train' / holdout / val."""
    view = out / "camvid_holdout"
    sets = view / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    for name in ("JPEGImages", "SegmentationClass", "class_names.txt"):
        link = view / name
        if not link.exists():
            link.symlink_to((data / name).resolve())
    train = (data / "ImageSets/Segmentation/train.txt").read_text().split()
    (sets / "trainsub.txt").write_text("".join(f"{i}\n" for i in train if not i.startswith(HOLDOUT_SEQUENCE)))
    (sets / "holdout.txt").write_text("".join(f"{i}\n" for i in train if i.startswith(HOLDOUT_SEQUENCE)))
    return view


def command(data: Path, run: Path, settings: dict, epochs: int, minutes: float | None, *,
            train_split: str, val_split: str, val_every: int, pretrained: bool = True) -> list[str]:
    cfg = dict(BASE)
    if pretrained:
        cfg["--backbone-weights"] = "imagenet"
    for k, v in settings.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    cmd = [sys.executable, "-m", "fcnseg.cli", "train", "--data", str(data), "--out", str(run),
           "--train-split", train_split, "--val-split", val_split, "--epochs", str(epochs),
           "--val-every", str(val_every)]
    for k, v in cfg.items():
        cmd += [k, v]
    cmd += FLAGS
    if minutes:
        cmd += ["--max-minutes", str(minutes)]
    return cmd


def last_row(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]


def run_logged(cmd: list[str], log: Path) -> float:
    print("$ fcnseg " + shlex.join(cmd[3:]), flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.time() - t0


def select(args) -> int:
    out = Path(args.out)
    view = holdout_view(Path(args.data), out)
    names = args.candidates.split(",") if args.candidates else list(CANDIDATES)
    results = json.loads((out / "select.json").read_text()) if (out / "select.json").is_file() else {}
    for name in names:
        run = out / name
        if name in results and not args.retrain:
            continue
        seconds = run_logged(command(view, run, CANDIDATES[name], args.epochs, None, train_split="trainsub",
                                     val_split="holdout", val_every=args.epochs), out / f"{name}.log")
        row = last_row(run)
        results[name] = {"overrides": CANDIDATES[name], "holdout_miou": row["val"]["miou"],
                         "holdout_pixel_acc": row["val"]["pixel_acc"], "holdout_iou": row["val"]["iou"],
                         "epochs": args.epochs, "steps": row["step"], "minutes": seconds / 60,
                         "images_per_s": row.get("images_per_s")}
        (out / "select.json").write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: holdout mIoU {100 * row['val']['miou']:.1f} ({seconds / 60:.1f} min)", flush=True)
    print(f"\n| candidate | change from base | holdout mIoU ({HOLDOUT_SEQUENCE}, final weights) | train min |")
    print("|---|---|---:|---:|")
    for name, r in results.items():
        change = ", ".join(f"{k} {v}" for k, v in r["overrides"].items()) or "-"
        print(f"| {name} | {change} | {100 * r['holdout_miou']:.1f} | {r['minutes']:.1f} |")
    return 0


def final(args) -> int:
    """Train the runs named by ``--kinds`` (each alone on the machine, for its training minutes),
    evaluate every run that has a ``last.pt`` once on val, and print the table when both exist."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads(args.settings) if args.settings else {}
    results = json.loads((out / "final.json").read_text()) if (out / "final.json").is_file() else {}
    for kind in ("pretrained", "scratch"):
        run = out / kind
        cmd = command(Path(args.data), run, settings, args.epochs, args.minutes, train_split="train",
                      val_split="val", val_every=args.val_every, pretrained=kind == "pretrained")
        train_it = not args.skip_train and kind in args.kinds.split(",")
        seconds = run_logged(cmd, out / f"{kind}.log") if train_it else None
        if not (run / "last.pt").is_file():
            continue
        if not train_it and kind in results:
            continue  # evaluated when it was trained
        ev_dir = out / f"{kind}_eval"
        ev = subprocess.run([sys.executable, "-m", "fcnseg.cli", "eval", "--checkpoint", str(run / "last.pt"),
                             "--data", args.data, "--split", "val", "--bf", "--json", "--out", str(ev_dir),
                             "--amp", "off", "--overwrite"], check=True, capture_output=True, text=True)
        res = json.loads(ev.stdout)
        summary = json.loads((run / "summary.json").read_text())
        results[kind] = {"command": "fcnseg " + shlex.join(cmd[3:]), "train_seconds": summary["seconds"],
                         "wall_seconds": seconds, "steps": summary["steps"], "total_steps": summary["total_steps"],
                         "completed": summary["completed"],
                         **{k: res[k] for k in ("miou", "pixel_acc", "mean_acc", "fwiou", "bf", "iou")},
                         "class_names": res["class_names"]}
        print(f"{kind}: val mIoU {100 * res['miou']:.1f}, BF {100 * res['bf']:.1f}, "
              f"{summary['seconds'] / 60:.1f} min, {summary['steps']}/{summary['total_steps']} steps", flush=True)
        (out / "final.json").write_text(json.dumps(results, indent=1) + "\n")
    if not {"pretrained", "scratch"} <= results.keys():
        return 0
    if args.plot:
        print(f"learning curves: {plot_curves(out, Path(args.plot))}")
    names = results["pretrained"]["class_names"]
    print("\n| | pretrained (ImageNet Lite0) | scratch (same recipe) |\n|---|---:|---:|")
    for key, label in (("miou", "val mIoU"), ("pixel_acc", "pixel acc"), ("mean_acc", "mean class acc"),
                       ("fwiou", "fwIoU"), ("bf", "BF score")):
        print(f"| {label} | {100 * results['pretrained'][key]:.1f} | {100 * results['scratch'][key]:.1f} |")
    print(f"| training min | {results['pretrained']['train_seconds'] / 60:.1f} | "
          f"{results['scratch']['train_seconds'] / 60:.1f} |")
    for i, n in enumerate(names):
        print(f"| IoU {n} | {100 * results['pretrained']['iou'][i]:.1f} | {100 * results['scratch']['iou'][i]:.1f} |")
    return 0


def plot_curves(out: Path, png: Path) -> Path:
    """Val mIoU (the learning curve, never used for a choice) and training loss per epoch, both runs."""
    from fcnseg.jsonl import read_jsonl
    from fcnseg.plots import new_figure, save_figure

    fig = new_figure(10, 3.6)
    ax_miou, ax_loss = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for kind, colour in (("pretrained", "tab:blue"), ("scratch", "tab:orange")):
        rows = read_jsonl(out / kind / "metrics.jsonl")
        val = [(r["epoch"], 100 * r["val"]["miou"]) for r in rows if r.get("val")]
        ax_miou.plot(*zip(*val), "o-", color=colour, label=kind)
        steps = read_jsonl(out / kind / "steps.jsonl")  # one row per step: epoch-mean of the loss
        epochs = sorted({r["epoch"] for r in steps})
        means = [sum(r["loss"] for r in steps if r["epoch"] == e) / sum(1 for r in steps if r["epoch"] == e)
                 for e in epochs]
        ax_loss.plot(epochs, means, "-", color=colour, label=kind)
    ax_miou.set(xlabel="epoch", ylabel="val mIoU (%)", title="camvid-voc val (101 images, full size)")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss (epoch mean)")
    for ax in (ax_miou, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, png)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="stage", required=True)
    default_data = str(Path(__file__).resolve().parents[1].parent / "shared/data/camvid-voc")
    s = sub.add_parser("select", help="choose settings on the held-out sequence (never val)")
    s.add_argument("--data", default=default_data)
    s.add_argument("--out", default="runs/transfer_select")
    s.add_argument("--epochs", type=int, default=20)
    s.add_argument("--candidates", default=None, help=f"subset of {','.join(CANDIDATES)}")
    s.add_argument("--retrain", action="store_true")
    f = sub.add_parser("final", help="the chosen recipe on train, pretrained and scratch, val once")
    f.add_argument("--data", default=default_data)
    f.add_argument("--out", default="runs/transfer")
    f.add_argument("--epochs", type=int, default=30)
    f.add_argument("--minutes", type=float, default=30.0)
    f.add_argument("--val-every", type=int, default=5, help="val points for the learning curve only")
    f.add_argument("--settings", default=None, help="JSON overrides of the base recipe chosen by `select`")
    f.add_argument("--skip-train", action="store_true")
    f.add_argument("--kinds", default="pretrained,scratch", help="which runs to train (both are evaluated)")
    f.add_argument("--plot", default=None, help="write the learning curves of both runs to this PNG")
    args = p.parse_args()
    return select(args) if args.stage == "select" else final(args)


if __name__ == "__main__":
    sys.exit(main())
