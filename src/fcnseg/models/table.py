"""``fcnseg models``: the registered models with parameters and GFLOPs (counted, not typed in)."""
from __future__ import annotations

import argparse
import json

import torch

from fcnseg.models.flops import count_flops, count_params
from fcnseg.models.registry import build_model, list_models, model_family
from fcnseg.sizes import size_argument, size_pair


def model_table(size: tuple[int, int] = (500, 500), num_classes: int = 21,
                names: list[str] | None = None) -> list[dict]:
    """One row per model: parameters and forward GFLOPs at ``size`` for both geometries.

    Models outside the FCN-32s/16s/8s family have one geometry: their caffe columns are None.
    """
    rows = []
    for name in names or list_models():
        geometries = ("modern", "caffe") if model_family(name) == "fcn" else ("modern",)
        with torch.device("meta"):  # no weights are allocated: counting is instant
            models = {g: build_model(name, num_classes=num_classes, geometry=g) for g in geometries}
        flops = {g: count_flops(m, size) / 1e9 for g, m in models.items()}
        caffe = flops.get("caffe")
        rows.append({"model": name, "params_M": count_params(models["modern"]) / 1e6,
                     "gflops_modern": flops["modern"], "gflops_caffe": caffe,
                     "caffe_over_modern": caffe / flops["modern"] if caffe is not None else None})
    return rows


def format_markdown(rows: list[dict], size: tuple[int, int], num_classes: int) -> str:
    h, w = size
    lines = [f"| model | params (M) | GFLOPs modern {h}x{w} | GFLOPs caffe {h}x{w} | caffe / modern |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        caffe, ratio = ((f"{r['gflops_caffe']:.1f}", f"{r['caffe_over_modern']:.2f}x")
                        if r["gflops_caffe"] is not None else ("-", "-"))
        lines.append(f"| {r['model']} | {r['params_M']:.1f} | {r['gflops_modern']:.1f} | {caffe} | {ratio} |")
    lines.append(f"\n{num_classes} classes; 1 GFLOP = 1e9 floating-point operations "
                 f"(a multiply-add counts 2), counted by torch.utils.flop_counter.")
    return "\n".join(lines)


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=size_argument, default=(500, 500), help="input HxW for FLOPs (default 500x500)")
    p.add_argument("--num-classes", type=int, default=21,
                   help="output classes of the counted models (default 21, PASCAL VOC)")
    p.add_argument("--models", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")


def cli_main(args: argparse.Namespace) -> int:
    names = args.models.split(",") if args.models else None
    size = size_pair(args.size)
    rows = model_table(size, args.num_classes, names)
    print(json.dumps(rows, indent=2) if args.json else format_markdown(rows, size, args.num_classes))
    return 0
