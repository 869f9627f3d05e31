"""`fcnseg import caffe` at the real size: an FCN-VGG16 caffemodel as large as the published ones.

The tests compare against OpenCV with fc6/fc7 narrowed to 64 channels (random weights for the
real fc6 alone are 411 MB). This script uses the real widths (fcn8s-heavy-pascal: 134.5 M
parameters, a 538 MB caffemodel) with random weights: it writes the reference deploy
prototxt and caffemodel (tests/caffe_reference.py), runs ``fcnseg import caffe`` as a user
would (a subprocess: wall time and peak memory), then compares the imported checkpoint's logits
with OpenCV's Caffe reader on one image (max |diff| relative to the logit range, argmax
agreement). Nothing is downloaded; the files go to a temporary folder unless --workdir.

    python benchmarks/caffe_fullsize.py                          # FCN-8s, 375x500 (a VOC photo's size)
    python benchmarks/caffe_fullsize.py --variant 32s --size 64x64 --at-once
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=["32s", "16s", "8s"], default="8s")
    p.add_argument("--at-once", action="store_true", help="the fcn8s-atonce net (Scale layers)")
    p.add_argument("--size", default="375x500", help="HxW of the test image (default 375x500)")
    p.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run(work, args.variant, args.at_once, (h, w))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    ok = result["max_abs_diff_rel"] <= 1e-3 and result["argmax_agreement"] >= 0.999
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def run(work: Path, variant: str, at_once: bool, size: tuple[int, int]) -> dict:
    import torch

    import caffe_reference as ref
    import fcnseg
    from fcnseg.infer.arrays import normalize

    from _predict_utils import smooth_image

    name = f"fcn{variant}-{'atonce' if at_once else 'heavy'}"
    proto = work / f"{name}.prototxt"
    proto.write_text(ref.fcn_deploy_prototxt(variant, at_once=at_once))
    t = time.perf_counter()
    weights = ref.fcn_weights(variant, np.random.default_rng(0), at_once=at_once)
    caffemodel = ref.write_caffemodel(proto, work / f"{name}.caffemodel", weights)
    del weights
    write_s = time.perf_counter() - t
    ckpt = work / f"{name}.pt"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fcnseg.cli", "import", "caffe", "--caffemodel", str(caffemodel),
                    "--out", str(ckpt), "--overwrite"], check=True)
    import_s = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB

    image = smooth_image(*size, seed=5)
    t = time.perf_counter()
    oracle = ref.opencv_forward(proto, caffemodel, image)
    opencv_s = time.perf_counter() - t
    model = fcnseg.load_model(ckpt)
    t = time.perf_counter()
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(image))).numpy()
    fcnseg_s = time.perf_counter() - t
    span = float(oracle.max() - oracle.min())
    return {
        "net": name, "image": f"{size[0]}x{size[1]}",
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "caffemodel_MB": round(caffemodel.stat().st_size / 1e6, 1),
        "checkpoint_MB": round(ckpt.stat().st_size / 1e6, 1),
        "write_caffemodel_s": round(write_s, 1), "import_s": round(import_s, 1),
        "import_peak_rss_MB": round(peak_mb),
        "opencv_forward_s": round(opencv_s, 2), "fcnseg_forward_s": round(fcnseg_s, 2),
        "logit_range": round(span, 3),
        "max_abs_diff_rel": float(np.abs(logits - oracle).max()) / span,
        "argmax_agreement": float((logits.argmax(1) == oracle.argmax(1)).mean()),
    }


if __name__ == "__main__":
    sys.exit(main())
