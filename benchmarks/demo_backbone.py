"""Which backbone should ``fcnseg demo`` train? Runs the demo with each backbone on the
synthetic data of seed 1 (the default demo uses seed 0, so the choice is not made on the split
the demo reports), the same time cap for both, and prints held-out mIoU, BF and minutes.

    python benchmarks/demo_backbone.py --out runs/demo_backbone

Writes ``benchmarks/demo_backbone.{json,txt}`` (``--record``) with the host's CPU flags.
The demo's default (``fcnseg.demo.DEFAULT_BACKBONE``) and its stated reason follow this result.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from fcnseg.bench.timing import cpu_info
from fcnseg.demo import BACKBONES

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo_backbone")
    p.add_argument("--seed", type=int, default=1, help="data and training seed (default 1: not the demo's 0)")
    p.add_argument("--minutes", type=float, default=6.0, help="the demo's time cap, for each backbone")
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--record", action="store_true", help="write benchmarks/demo_backbone.{json,txt}")
    args = p.parse_args()
    rows = {}
    for name in args.backbones.split(","):
        out = Path(args.out) / name
        cmd = [sys.executable, "-m", "fcnseg.cli", "demo", "--out", str(out), "--seed", str(args.seed),
               "--minutes", str(args.minutes), "--backbone", name, "--overwrite"]
        print("$ fcnseg " + " ".join(cmd[3:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        s = json.loads((out / "summary.json").read_text())
        rows[name] = {k: s[k] for k in ("miou", "pixel_acc", "bf", "minutes_total", "model", "backbone_weights")}
        print(f"{name}: held-out mIoU {100 * s['miou']:.1f}, BF {100 * s['bf']:.1f}, "
              f"{s['minutes_total']:.1f} min in total", flush=True)
    lines = [f"fcnseg demo on synthetic data of seed {args.seed}, time cap {args.minutes:g} min each", "",
             "| backbone | model | weights | held-out mIoU | pixel acc | BF | minutes (all 5 steps) |",
             "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {r['model']} | {r['backbone_weights'] or 'scratch'} | {100 * r['miou']:.1f} | "
              f"{100 * r['pixel_acc']:.1f} | {100 * r['bf']:.1f} | {r['minutes_total']:.1f} |" for n, r in rows.items()]
    host = cpu_info()
    lines += ["", f"host: {host['model']}, {host['usable_cpus']} usable CPUs, flags: "
              + " ".join(f for f, on in host["flags"].items() if on)]
    print("\n".join(lines))
    if args.record:
        (HERE / "demo_backbone.json").write_text(json.dumps({"seed": args.seed, "minutes": args.minutes,
                                                             "host": host, "rows": rows}, indent=2) + "\n")
        (HERE / "demo_backbone.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
