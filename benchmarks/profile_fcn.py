"""Where does an FCN forward pass spend its time? torch.profiler, eager vs the CPU fast path.

    python benchmarks/profile_fcn.py                          # fcn8s_vgg16, 360x480, 2 threads
    python benchmarks/profile_fcn.py --variants fp32,channels_last,fastpath,bf16_autocast
    ONEDNN_VERBOSE=1 python benchmarks/profile_fcn.py --variants fp32 2>&1 | grep reorder

Prints, per variant, the ops with the most self CPU time (grouped by input shape), and
each op's achieved GFLOP/s: counted by the profiler for matmuls, estimated from the
shapes for oneDNN convolutions (stride 1, "same" padding, as in VGG16; marked ~). Run ``ONEDNN_VERBOSE=1`` to see
oneDNN's per-call weight reorders (``reorder ... 4096x512x7x7``) that eager mode pays on
every forward and the fast path does once.
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fcn8s_vgg16")
    p.add_argument("--size", default="360x480", help="HxW")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="fp32,fastpath", help="bench variants to profile")
    p.add_argument("--rows", type=int, default=15, help="ops listed per variant")
    args = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from fcnseg.bench import prepare_variant, random_model
    from fcnseg.models import count_flops
    from fcnseg.sizes import size_pair

    torch.set_num_threads(args.threads)
    size = size_pair(args.size, "--size")
    model = random_model(args.model, 21)
    x = torch.randn(1, 3, *size)
    flops = count_flops(model, size)
    print(f"{args.model} {size[0]}x{size[1]}, {args.threads} threads, {flops / 1e9:.1f} GFLOP per forward")
    for name in args.variants.split(","):
        with torch.inference_mode():
            prep = prepare_variant(name, model, x, torch.device("cpu"), args.threads)
            for _ in range(2):  # warm-up: oneDNN primitive creation, allocator
                prep.fn()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
                prep.fn()
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events)
        print(f"\n== {name}: {total / 1e3:.0f} ms self CPU in ops ({flops / total * 1e-3:.1f} GFLOP/s overall)")
        print(f"  {'self ms':>8s} {'share':>6s} {'GFLOP/s':>8s} {'calls':>5s}  op  [input shapes]")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
            fl, mark = (e.flops, "") if e.flops else (_conv_flops(e) * e.count, "~")
            rate = f"{mark}{fl / e.self_cpu_time_total * 1e-3:.1f}" if fl and e.self_cpu_time_total else "-"
            print(f"  {e.self_cpu_time_total / 1e3:8.1f} {100 * e.self_cpu_time_total / total:5.1f}% {rate:>8s} "
                  f"{e.count:5d}  {e.key}  {str(e.input_shapes)[:90]}")
    return 0


def _conv_flops(event) -> float:
    """FLOPs of one call of a conv op from its input shapes, assuming stride 1 and output
    size = input size (true for VGG16's 3x3/pad-1 convs, modern fc6 7x7/pad-3, 1x1 convs)."""
    if "conv" not in event.key or "transpose" in event.key or len(event.input_shapes) < 2:
        return 0.0
    x, w = event.input_shapes[0], event.input_shapes[1]
    if len(x) != 4 or len(w) != 4:
        return 0.0
    b, _, h, wd = x
    o, i, kh, kw = w
    return 2.0 * b * h * wd * o * i * kh * kw


if __name__ == "__main__":
    raise SystemExit(main())
