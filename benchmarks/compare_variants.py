"""Interleaved A/B timing of inference variants: fair comparisons on a shared or noisy machine.

``fcnseg bench`` times one variant after another, so a burst of load from another process
lands on whichever variant runs at that moment. Here every round runs each variant once,
in turn, so load bursts are spread over all of them; the ratios to the first variant are
then meaningful even when the absolute times are not.

    python benchmarks/compare_variants.py                                 # fp32 vs channels_last vs fastpath
    python benchmarks/compare_variants.py --variants fp32,fastpath,compile,onnxruntime --rounds 8
    python benchmarks/compare_variants.py --variants fp32,bf16_autocast,bf16_autocast_cl,bf16_weights,bf16_fastpath
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fcn8s_vgg16")
    p.add_argument("--geometry", default="modern")
    p.add_argument("--size", default="360x480", help="HxW")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="fp32,channels_last,fastpath")
    p.add_argument("--rounds", type=int, default=6, help="timed rounds (each runs every variant once)")
    p.add_argument("--peak", type=int, default=2048, metavar="N",
                   help="also time an N x N fp32 torch.mm in every round, for the fraction of peak "
                        "under the same load (0: off; default 2048)")
    args = p.parse_args(argv)

    import torch

    from fcnseg.bench import prepare_variant, random_model
    from fcnseg.models import count_flops
    from fcnseg.sizes import size_pair

    torch.set_num_threads(args.threads)
    size = size_pair(args.size, "--size")
    model = random_model(args.model, 21, args.geometry)
    x = torch.randn(args.batch, 3, *size)
    flops = count_flops(model, size, batch=args.batch)
    names = args.variants.split(",")
    with torch.inference_mode():
        fns = {n: prepare_variant(n, model, x, torch.device("cpu"), args.threads).fn for n in names}
        if args.peak:
            a, b = torch.randn(args.peak, args.peak), torch.randn(args.peak, args.peak)
            a16, b16 = a.bfloat16(), b.bfloat16()
            fns["matmul_peak"] = lambda: torch.mm(a, b)
            fns["matmul_peak_bf16"] = lambda: torch.mm(a16, b16)
        for fn in fns.values():  # warm-up
            fn()
        wall: dict[str, list[float]] = {n: [] for n in fns}
        cpu: dict[str, list[float]] = {n: [] for n in fns}
        for _ in range(args.rounds):
            for n, fn in fns.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                wall[n].append(time.perf_counter() - t0)
                cpu[n].append(time.process_time() - c0)
    base = statistics.median(wall[names[0]])
    print(f"{args.model} {args.geometry} {size[0]}x{size[1]} batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds, {flops / 1e9:.1f} GFLOP per batch")
    peak = 2 * args.peak ** 3 / statistics.median(wall["matmul_peak"]) / 1e9 if args.peak else None
    if peak:
        peak16 = 2 * args.peak ** 3 / statistics.median(wall["matmul_peak_bf16"]) / 1e9
        print(f"  matmul peak (n={args.peak}, same rounds, median): fp32 {peak:.1f} GFLOP/s, "
              f"bf16 {peak16:.1f} GFLOP/s (%peak below is against fp32)")
    print(f"  {'variant':18s} {'median ms':>10s} {'min ms':>8s} {'GFLOP/s':>8s} {'vs ' + names[0]:>10s} "
          f"{'%peak':>6s} {'cpu%':>5s}")
    for n in names:
        med = statistics.median(wall[n])
        util = sum(cpu[n]) / (sum(wall[n]) * args.threads)
        frac = f"{100 * flops / med / 1e9 / peak:6.1f}" if peak else "     -"
        print(f"  {n:18s} {1e3 * med:10.1f} {1e3 * min(wall[n]):8.1f} {flops / med / 1e9:8.1f} "
              f"{base / med:9.2f}x {frac} {100 * util:5.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
