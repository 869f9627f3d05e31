"""Choosing the int8 settings (issue #11: argmax agreement >= 99% against fp32), WITHOUT val.

Every candidate quantises the same fp32 graph, calibrated on the same ``--calib-images`` train
images as ``fcnseg export --int8`` (seeded draw), and is scored on ``--check-images`` OTHER
train images: argmax agreement with the fp32 PyTorch model over all their pixels, and latency
(median of ``--repeats`` runs at ``--latency-size``, batch 1, ``--threads`` threads). The rule:
the most agreeing ORT candidate. (The first rule, "the fastest that reaches ``--target``", was
dropped after the first runs: every candidate runs the same int8 convs, and their latencies
differed by less than the run-to-run noise of this shared host, e.g. 22.9 and 36.6 ms for the same
fp32 graph in two runs; speed is measured by ``precision_table.py``.) Val is read only
afterwards, by ``precision_table.py``, once.

    python benchmarks/int8_select.py --checkpoint runs/transfer_v2/pretrained/last.pt \\
        --data ../shared/data/camvid-voc --json benchmarks/int8_select_lite0.json

Candidates: ORT ``quantize_static`` with a calibration method (minmax, percentile, entropy) and
parts kept fp32 (``fcnseg.quantize.KEEP_FP32_CHOICES``); NNCF with and without the head kept
fp32 (``--openvino``, needs the openvino extra).
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
from fcnseg.data.image_files import read_image
from fcnseg.export import _export_bytes, model_metadata
from fcnseg.infer.arrays import normalize
from fcnseg.infer.onnx_runner import INPUT_NAME, OUTPUT_NAME, import_onnxruntime
from fcnseg.optional import require
from fcnseg.precision import reported_flags
from fcnseg.quantize import calibration_files, compare_run, fp32_nodes, quantize_onnx, split_files
from fcnseg.sizes import parse_size

ORT_CANDIDATES = {  # name: (calibration method, parts kept fp32)
    "minmax": ("minmax", ("upsampling",)),  # the export's setting before this selection
    "minmax+head": ("minmax", ("head",)),
    "minmax+head+stem": ("minmax", ("head", "stem")),
    "minmax+head+depthwise": ("minmax", ("head", "depthwise")),
    "percentile": ("percentile", ("upsampling",)),
    "percentile+head": ("percentile", ("head",)),
    "entropy+head": ("entropy", ("head",)),
}
OV_CANDIDATES = {"nncf": (), "nncf+head": ("head",), "nncf+head+ac": ("head",)}
# "+ac": nncf.quantize_with_accuracy_control, which reverts the layers that cost most to fp32 until
# the argmax agreement with fp32 on --ac-images OTHER train images (neither calibration nor check)
# is within 1 point of 100%.


def ort_session(model_bytes: bytes, threads: int):
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    s = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    return lambda x: s.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def ov_runner(fp32_bytes: bytes, calib, keep: tuple, threads: int, tmp: Path, ac_refs=None):
    ov = require("openvino", "the OpenVINO candidates (--openvino)")
    nncf = require("nncf", "the OpenVINO candidates (--openvino)")
    onnx = require("onnx", "int8 selection")
    src = tmp / "fp32.onnx"
    src.write_bytes(fp32_bytes)
    names = fp32_nodes(onnx.load_from_string(fp32_bytes).graph, keep) if keep else []
    core = ov.Core()
    model = core.read_model(str(src))
    # OpenVINO keeps the ONNX node names as the operations' friendly names.
    ignored = nncf.IgnoredScope(names=names, validate=False) if names else None
    kwargs = {"ignored_scope": ignored} if ignored else {}
    calib_ds = nncf.Dataset([normalize(read_image(f)) for f in calib])
    if ac_refs is None:
        q = nncf.quantize(model, calib_ds, subset_size=len(calib), preset=nncf.QuantizationPreset.PERFORMANCE, **kwargs)
    else:
        def agreement(compiled, items):  # items: (x (1,3,H,W), fp32 argmax (1,H,W))
            hits = [float((compiled(x)[0].argmax(1) == ref).mean()) for x, ref in items]
            return float(np.mean(hits)), hits
        q = nncf.quantize_with_accuracy_control(
            model, calib_ds, nncf.Dataset(ac_refs), agreement, max_drop=0.01, subset_size=len(calib),
            preset=nncf.QuantizationPreset.PERFORMANCE, **kwargs)
    compiled = core.compile_model(q, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    path = tmp / "int8_ov.xml"
    ov.save_model(q, str(path), compress_to_fp16=False)
    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    return (lambda x: compiled(x)[0]), size


def choose(rows: dict) -> str:
    """The selection rule: the candidate with the highest held-out agreement."""
    return max(rows, key=lambda k: rows[k]["agreement"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--check-images", type=int, default=64)
    p.add_argument("--candidates", default=",".join(ORT_CANDIDATES))
    p.add_argument("--ov-candidates", default=",".join(OV_CANDIDATES))
    p.add_argument("--openvino", action="store_true", help="also the NNCF candidates")
    p.add_argument("--ac-images", type=int, default=32, help="validation images of the accuracy control")
    p.add_argument("--latency-size", default="360x480")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    calib, rest, notes = split_files(calibration_files(args.data, "train"), args.calib_images,
                                     args.check_images + args.ac_images)
    check, ac_files = rest[:args.check_images], rest[args.check_images:]
    model = load_model(args.checkpoint, device="cpu")
    fp32_bytes, _ = _export_bytes(model, "torchscript", 17, model_metadata(model))
    h, w = parse_size(args.latency_size)
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    print(f"CPU flags: {' '.join(reported_flags())}; {len(calib)} calibration / {len(check)} check train images; "
          f"{args.threads} threads", flush=True)
    rows = {}
    runners = {"fp32_onnx": (ort_session(fp32_bytes, args.threads), len(fp32_bytes), 0.0)}
    for name in args.candidates.split(","):
        method, keep = ORT_CANDIDATES[name]
        t0 = time.perf_counter()
        q = quantize_onnx(fp32_bytes, calib, calibrate=method, keep_fp32=keep)
        runners[name] = (ort_session(q, args.threads), len(q), time.perf_counter() - t0)
    if args.openvino:
        refs = None
        for name in args.ov_candidates.split(","):
            keep = OV_CANDIDATES[name]
            if name.endswith("+ac") and refs is None:
                refs = []
                for f in ac_files:
                    x_ac = normalize(read_image(f))
                    with torch.inference_mode():
                        refs.append((x_ac, model(torch.from_numpy(x_ac)).argmax(1).numpy()))
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                run, size = ov_runner(fp32_bytes, calib, keep, args.threads, Path(tmp),
                                      ac_refs=refs if name.endswith("+ac") else None)
                runners[name] = (run, size, time.perf_counter() - t0)
    for name, (run, size, quant_s) in runners.items():
        agreement, rel = compare_run(model, run, check)
        ms = 1000 * time_callable(lambda run=run: run(x), warmup=2, repeats=args.repeats).median_s
        rows[name] = {"agreement": agreement, "max_rel_diff": rel, "latency_ms": ms, "bytes": size,
                      "quantise_s": quant_s}
        print(f"{name:24s} agreement {100 * agreement:6.2f}%  max|diff| {100 * rel:5.1f}%  {ms:7.1f} ms  "
              f"{size / 1e6:6.1f} MB  (quantised in {quant_s:.0f} s)", flush=True)
    int8 = {k: v for k, v in rows.items() if k != "fp32_onnx"}
    ort_rows = {k: v for k, v in int8.items() if k in ORT_CANDIDATES}
    chosen = choose(ort_rows)
    reached = ort_rows[chosen]["agreement"] >= args.target
    print(f"chosen (ORT): {chosen}, the most agreeing ({'reaches' if reached else 'below'} "
          f"{100 * args.target:g}%)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "checkpoint": args.checkpoint, "cpu_flags": reported_flags(), "threads": args.threads,
            "calibration_images": len(calib), "check_images": len(check), "ac_images": len(ac_files), "notes": notes,
            "latency_size": args.latency_size, "rows": rows, "chosen_ort": chosen,
            "rule": "the most agreeing ORT candidate on the check images",
            "candidates": {k: {"calibrate": m, "keep_fp32": list(kp)} for k, (m, kp) in ORT_CANDIDATES.items()},
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
