"""The CPU recipe on camvid-voc: train from scratch on 2 cores within 60 minutes, evaluate,
and measure dense-CRF refinement. Prints the figures recorded in the README.

    python benchmarks/camvid_cpu.py --data ../shared/data/camvid-voc --out runs/camvid_cpu

The training command it runs is the documented recipe (see README); it is also printed.
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
    "--channels-last", "--amp", "off", "--workers", "1", "--val-every", "25",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/camvid-voc"))
    p.add_argument("--out", default="runs/camvid_cpu")
    p.add_argument("--epochs", type=int, default=85)
    p.add_argument("--minutes", type=float, default=50.0, help="training time budget (the target allows 60)")
    p.add_argument("--skip-train", action="store_true", help="only evaluate an existing run")
    p.add_argument("--crf-images", type=int, default=None, help="limit the CRF measurement")
    args = p.parse_args()
    out = Path(args.out)
    cmd = [sys.executable, "-m", "fcnseg.cli", "train", "--data", args.data, "--out", str(out / "train"),
           *RECIPE, "--epochs", str(args.epochs), "--max-minutes", str(args.minutes), "--overwrite",
           "--no-progress"]
    print("recipe:", "fcnseg train " + shlex.join(cmd[4:]), flush=True)
    if not args.skip_train:
        t0 = time.time()
        subprocess.run(cmd, check=True)
        print(f"training wall time {(time.time() - t0) / 60:.1f} min", flush=True)

    import torch

    from fcnseg.checkpoint import model_from_checkpoint
    from fcnseg.data.datasets import open_dataset
    from fcnseg.engine.evaluate import evaluate_crf_effect, run_eval

    torch.set_num_threads(2)
    best = out / "train" / "best.pt"
    ev = run_eval(str(best), args.data, "val", bf=True, out=str(out / "eval"), overwrite=True, progress=False)
    print(f"val (fcnseg eval, 101 full-size images): mIoU {100 * ev['miou']:.1f}  pixel acc "
          f"{100 * ev['pixel_acc']:.1f}  mean acc {100 * ev['mean_acc']:.1f}  fwIoU {100 * ev['fwiou']:.1f}  "
          f"BF {100 * ev['bf']:.1f}", flush=True)
    ds = open_dataset(args.data, "val")
    model = model_from_checkpoint(best, num_classes=ds.num_classes).eval()
    t0 = time.time()
    crf = evaluate_crf_effect(model, ds, max_images=args.crf_images, progress=False)
    crf_s = time.time() - t0
    for k in ("without", "with"):
        r = crf[k]
        print(f"CRF {k:7s}: mIoU {100 * r['miou']:.1f}  pixel acc {100 * r['pixel_acc']:.1f}  BF {100 * r['bf']:.1f}")
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    summary = {"recipe": "fcnseg train " + shlex.join(cmd[4:]), "eval": {k: ev[k] for k in (
        "miou", "pixel_acc", "mean_acc", "fwiou", "bf", "iou")}, "class_names": ev["class_names"],
        "crf": {k: {m: crf[k][m] for m in ("miou", "pixel_acc", "bf")} for k in ("without", "with")},
        "crf_seconds": crf_s, "epochs_done": metrics[-1]["epoch"], "steps": metrics[-1]["step"],
        "train_images_per_s": metrics[-1].get("images_per_s")}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
