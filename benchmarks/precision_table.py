"""Accuracy and speed of every precision path on a real trained model, with the fp32 baseline from
the same run (issue #11): path, mIoU, pixel acc, argmax agreement vs fp32, latency, model size.

    python benchmarks/precision_table.py --checkpoint runs/camvid_cpu/train/best.pt \\
        --data ../shared/data/camvid-voc --threads 2 --json benchmarks/precision_table.json

Paths: ``fp32_eager`` (the exact reference: every other path's agreement is measured against its
argmax, pixel by pixel, on the same images), ``fp32_fastpath`` and ``bf16_fastpath`` (the CPU fast
path of ``fcnseg predict``), ``fp32_onnx`` and ``int8_onnx`` (onnxruntime; int8 = ``fcnseg export
--int8``, calibrated on ``--calib-images`` images of the training split, none of them val). Every
image of the split is segmented at full size by every path. Latency: median of ``--repeats``
runs on one ``--latency-size`` input (batch 1, ``--threads`` threads). Also printed: the CPU
flags and what ``--precision auto`` chose on this machine (with the probe's reason).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fcnseg.api import load_model
from fcnseg.bench.timing import time_callable
from fcnseg.data.datasets import open_dataset
from fcnseg.data.image_files import read_image, read_mask
from fcnseg.export import export_int8, export_onnx
from fcnseg.infer.arrays import normalize
from fcnseg.infer.onnx_runner import OnnxModel
from fcnseg.infer.torch_runner import prepared_model
from fcnseg.metrics import ConfusionMatrix
from fcnseg.optional import available, require
from fcnseg.precision import auto_precision, reported_flags
from fcnseg.sizes import parse_size

PATHS = ("fp32_eager", "fp32_fastpath", "bf16_fastpath", "fp32_onnx", "int8_onnx")
# Measured beside them when OpenVINO + NNCF are installed (pip install openvino nncf), to decide
# which int8 tool fcnseg keeps (issue #11: one path, the fastest at equal accuracy).
OPENVINO_PATHS = ("fp32_openvino", "int8_openvino")


def build_runners(ckpt: str, data: str, tmp: Path, calib_images: int, threads: int,
                  paths=PATHS) -> tuple[dict, dict, dict]:
    """{path: fn(x (1,3,H,W) float32 numpy) -> logits numpy}, {path: model bytes}, {path: notes}."""
    model = load_model(ckpt)
    n_params = sum(p.numel() for p in model.parameters())
    runners, sizes, notes = {}, {}, {}

    def torch_fn(module):
        def run(x):
            with torch.inference_mode():
                return module(torch.from_numpy(x)).float().numpy()
        return run

    for path in paths:
        if path == "fp32_eager":
            runners[path], sizes[path] = torch_fn(model), 4 * n_params
        elif path in ("fp32_fastpath", "bf16_fastpath"):
            prec = path.split("_")[0]
            runners[path], sizes[path] = torch_fn(prepared_model(model, prec)), (4 if prec == "fp32" else 2) * n_params
        elif path == "fp32_onnx":
            res = export_onnx(ckpt, tmp / "fp32.onnx")
            runners[path], sizes[path] = OnnxModel(res.path, threads=threads), res.path.stat().st_size
        elif path == "int8_onnx":
            res = export_int8(ckpt, tmp / "int8.onnx", data, calib_images=calib_images, min_agreement=0.0)
            runners[path], sizes[path] = OnnxModel(res.path, threads=threads), res.path.stat().st_size
            notes[path] = (f"calibrated on {res.calibration_images} train images; export check "
                           f"{100 * res.agreement:.2f}% agreement on {res.check_images} held-out train images")
        elif path in OPENVINO_PATHS:
            onnx_path = tmp / "fp32.onnx"
            if not onnx_path.exists():
                export_onnx(ckpt, onnx_path)
            runners[path], sizes[path], notes[path] = openvino_runner(onnx_path, path.startswith("int8"), data,
                                                                      calib_images, threads, tmp, ckpt)
    return runners, sizes, notes


def openvino_runner(onnx_path: Path, int8: bool, data: str, calib_images: int, threads: int, tmp: Path,
                    ckpt: str | None = None):
    """OpenVINO on the exported graph: fp32 (precision hint f32: exact), or int8 as ``fcnseg export
    --format openvino --int8`` makes it (NNCF with accuracy control aiming at 99% agreement on
    other train images, calibrated on the same train images as int8_onnx; never refused here)."""
    ov = require("openvino", "the OpenVINO rows of precision_table.py")

    if int8:
        from fcnseg.export_openvino import export_openvino_int8
        from fcnseg.quantize import DEFAULT_INT8_MIN_AGREEMENT

        path = tmp / "int8_ov.xml"
        res = export_openvino_int8(ckpt, path, data, calib_images=calib_images, min_agreement=0.0,
                                   target_agreement=DEFAULT_INT8_MIN_AGREEMENT)
        model = ov.Core().read_model(str(path))
        note = (f"{res.tool}, calibrated on {res.calibration_images} train images; export check "
                f"{100 * res.agreement:.2f}% agreement on {res.check_images} held-out train images")
    else:
        path = tmp / "fp32_ov.xml"
        model = ov.Core().read_model(str(onnx_path))
        ov.save_model(model, str(path), compress_to_fp16=False)
        note = "OpenVINO CPU plugin, inference precision f32"
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                      "INFERENCE_PRECISION_HINT": "f32"})
    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size

    def run(x):
        return compiled(x)[0]
    return run, size, f"{note}; OpenVINO {ov.__version__}"


def measure(runners: dict, ds, num_classes: int, max_images: int | None = None) -> dict:
    """Scores of every path on ``ds`` and its argmax agreement with ``fp32_eager`` (same images)."""
    cms = {p: ConfusionMatrix(num_classes) for p in runners}
    agree = {p: 0 for p in runners}
    pixels = 0
    n = len(ds) if max_images is None else min(len(ds), max_images)
    for i in range(n):
        x = normalize(read_image(ds.image_path(i)))  # (1, 3, H, W)
        mask = torch.from_numpy(read_mask(ds.mask_path(i), num_classes).astype(np.int64))[None]
        ref = None
        for p, fn in runners.items():
            pred = fn(x).argmax(1)  # (1, H, W)
            if ref is None:
                ref = pred  # the first path is the fp32 reference
            agree[p] += int((pred == ref).sum())
            cms[p].update(torch.from_numpy(pred), mask)
        pixels += ref.size
    return {p: {**{k: v for k, v in cms[p].compute().items() if k in ("miou", "pixel_acc", "mean_acc")},
                "agreement_vs_fp32": agree[p] / pixels, "images": n} for p in runners}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--latency-size", default="360x480")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max-images", type=int, default=None, help="limit the images (smoke tests)")
    p.add_argument("--paths", default=None,
                   help=f"comma-separated (default {','.join(PATHS)}, plus {','.join(OPENVINO_PATHS)} when "
                        f"openvino and nncf are installed)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = ([s for s in args.paths.split(",") if s] if args.paths else
             [*PATHS, *(OPENVINO_PATHS if available("openvino") and available("nncf") else ())])
    if paths[0] != "fp32_eager":
        paths = ["fp32_eager", *[s for s in paths if s != "fp32_eager"]]  # the reference comes first
    ds = open_dataset(args.data, args.split)
    with tempfile.TemporaryDirectory(prefix="fcnseg-precision-") as tmp:
        runners, sizes, notes = build_runners(args.checkpoint, args.data, Path(tmp), args.calib_images,
                                              args.threads, paths)
        t0 = time.time()
        scores = measure(runners, ds, ds.num_classes, args.max_images)
        h, w = parse_size(args.latency_size)
        x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
        latency = {p: time_callable(lambda fn=fn: fn(x), warmup=2, repeats=args.repeats).median_s
                   for p, fn in runners.items()}
    choice = auto_precision("inference", load_model(args.checkpoint))  # probed on this very model
    rows = [{"path": p, **scores[p], "latency_ms": 1e3 * latency[p],
             "speedup_vs_fp32_fastpath": latency.get("fp32_fastpath", latency["fp32_eager"]) / latency[p],
             "model_mb": sizes[p] / 1e6, "note": notes.get(p, "")} for p in runners]
    print(f"{args.checkpoint} on {args.data} [{args.split}], {rows[0]['images']} images, "
          f"{args.threads} threads; CPU flags: {' '.join(reported_flags())}")
    print(f"--precision auto here: {choice.reason}")
    print(f"{'path':<15} {'mIoU':>6} {'pix acc':>7} {'agree':>7} {'ms':>8} {'x fast32':>8} {'MB':>7}")
    for r in rows:
        print(f"{r['path']:<15} {100 * r['miou']:6.2f} {100 * r['pixel_acc']:7.2f} "
              f"{100 * r['agreement_vs_fp32']:6.2f}% {r['latency_ms']:8.1f} {r['speedup_vs_fp32_fastpath']:8.2f} "
              f"{r['model_mb']:7.1f}  {r['note']}")
    print(f"(scored in {time.time() - t0:.0f} s; mIoU deltas vs fp32_eager: "
          + ", ".join(f"{r['path']} {100 * (r['miou'] - rows[0]['miou']):+.2f}" for r in rows[1:]) + ")")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "auto": choice.as_dict(), "flags": reported_flags(),
                                               "threads": args.threads, "latency_size": [h, w]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
