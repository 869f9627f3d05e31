"""Training throughput by precision and optimizer implementation, and where a step's time goes
(issue #11, point 4). Random weights and inputs (speed does not depend on values).

    # the CamVid recipe's net, fp32 vs bf16 autocast, both channels-last (2 threads)
    python benchmarks/train_precision.py --model fcn8s_small --model-arg width=32 \\
        --model-arg blocks=2,2,3,2 --crop 288x384 --batch 8 --threads 2
    # FCN-8s-VGG16 at 320x320, batch 4
    python benchmarks/train_precision.py --model fcn8s_vgg16 --crop 320x320 --batch 4 --threads 2
    # what limits the small net: torch.profiler's top ops of one step, per precision
    python benchmarks/train_precision.py --model fcn8s_small --model-arg width=32 \\
        --model-arg blocks=2,2,3,2 --crop 288x384 --batch 8 --profile

Each row: img/s (median and best of ``--repeats`` steps after ``--warmup``), for amp off / bf16
and for AdamW's for-loop, ``foreach`` and ``fused`` implementations (``--optimizers``). The
training step is the trainer's: zero_grad, forward under autocast, cross-entropy, backward,
optimizer step. Also printed: what ``--amp auto`` picks here (the training probe).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from fcnseg.bench import random_model
from fcnseg.precision import auto_precision, reported_flags
from fcnseg.sizes import parse_size, size_pair

OPTIMIZERS = {"adamw": {}, "adamw_foreach": {"foreach": True}, "adamw_fused": {"fused": True}}


def step_fn(model, opt, x, y, amp: str):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(x)  # (B, C, H, W)
        F.cross_entropy(logits.float(), y, ignore_index=255).backward()
        opt.step()
    return step


def build(args) -> torch.nn.Module:
    kwargs = dict(kv.split("=", 1) for kv in args.model_arg)
    kwargs = {k: (tuple(int(t) for t in v.split(",")) if "," in v else int(v) if v.isdigit() else v)
              for k, v in kwargs.items()}
    return random_model(args.model, args.classes, **kwargs).train()


def measure(args, amp: str, optimizer: str) -> dict:
    model = build(args)
    h, w = parse_size(args.crop)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, h, w, generator=gen)
    y = torch.randint(0, args.classes, (args.batch, h, w), generator=gen)
    if not args.nchw:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, **OPTIMIZERS[optimizer])
    step = step_fn(model, opt, x, y, amp)
    for _ in range(args.warmup):
        step()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile  # only for --profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            step()
        print(f"--- {amp} {optimizer}: top ops of one step (self CPU time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"amp": amp, "optimizer": optimizer, "img_s_median": args.batch / statistics.median(times),
            "img_s_best": args.batch / min(times)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fcn8s_small")
    p.add_argument("--model-arg", action="append", default=[], metavar="K=V")
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--crop", default="288x384")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--amps", default="off,bf16")
    p.add_argument("--optimizers", default="adamw,adamw_fused")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels-last")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.model} {args.model_arg} crop {args.crop} batch {args.batch}, {args.threads} threads, "
          f"{'NCHW' if args.nchw else 'channels-last'}; CPU flags: {' '.join(reported_flags())}")
    rows = [measure(args, amp, o) for amp in args.amps.split(",") for o in args.optimizers.split(",")]
    print(f"--amp auto here: {auto_precision('training', build(args), size_pair(parse_size(args.crop)), args.batch).reason}")
    base = rows[0]["img_s_median"]
    for r in rows:
        print(f"amp {r['amp']:<5} {r['optimizer']:<14} {r['img_s_median']:7.2f} img/s median "
              f"({r['img_s_best']:.2f} best), {r['img_s_median'] / base:.2f}x the first row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
