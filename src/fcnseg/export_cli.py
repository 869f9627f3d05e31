"""``fcnseg export``: the command's options, dispatched on ``--format`` to the ONNX export
(:mod:`fcnseg.export`, ``.onnx``) or the OpenVINO one (:mod:`fcnseg.export_openvino`, ``.xml`` + ``.bin``).

Both are checked against PyTorch before anything is written; ``--int8 --calib-data DIR`` quantises
(onnxruntime for ONNX; NNCF with accuracy control for OpenVINO, which reverts the layers that cost
most to fp32 until ``--int8-min-agreement`` holds on other training images) and refuses below
``--int8-min-agreement``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg import export_openvino as OV
from fcnseg import quantize as Q
from fcnseg.errors import ConfigError
from fcnseg.export import ATOL, DEFAULT_MIN_AGREEMENT, DEFAULT_RTOL, export_int8, export_onnx

SUFFIXES = {"onnx": ".onnx", "openvino": OV.SUFFIX}  # --format -> the --out file's suffix


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="fcnseg checkpoint (.pt)")
    p.add_argument("--format", default="onnx", choices=list(SUFFIXES),
                   help="onnx (default; run by onnxruntime) or openvino (an OpenVINO IR, .xml + .bin, converted "
                        "from the ONNX graph; needs fcnseg[openvino])")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output file: .onnx, or .xml for --format openvino (its .bin is written beside it)")
    p.add_argument("--opset", type=int, default=17,
                   help="ONNX opset (default 17; 18+ uses the dynamo exporter)")
    p.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                   help="torch.onnx exporter (auto: torchscript for opset < 18, else dynamo; "
                        "each falls back to the other)")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help=f"check: max |onnx - torch| <= RTOL * max |logits| + {ATOL:g} (default {DEFAULT_RTOL})")
    p.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                   help=f"check: minimum argmax agreement (default {DEFAULT_MIN_AGREEMENT})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    g = p.add_argument_group("int8 (post-training static quantisation: onnxruntime for onnx; NNCF for openvino, "
                             "with accuracy control: the layers that cost most stay fp32)")
    g.add_argument("--int8", action="store_true",
                   help="write an int8 model, calibrated on --calib-data and checked against fp32 on other images")
    g.add_argument("--calib-data", metavar="DIR",
                   help="dataset root (its --calib-split is used) or a folder of images, typical of the inputs")
    g.add_argument("--calib-split", default="train", help="split of --calib-data to calibrate on (default train)")
    g.add_argument("--calib-images", type=int, default=Q.DEFAULT_CALIB_IMAGES,
                   help=f"images to calibrate on (default {Q.DEFAULT_CALIB_IMAGES})")
    g.add_argument("--int8-min-agreement", type=float, default=Q.DEFAULT_INT8_MIN_AGREEMENT,
                   help=f"refuse to write below this argmax agreement with fp32 on held-out images; "
                        f"openvino: also the accuracy control's target (default {Q.DEFAULT_INT8_MIN_AGREEMENT})")


def cli_main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    fmt = getattr(args, "format", "onnx")
    if out.suffix.lower() != SUFFIXES[fmt]:
        raise ConfigError(f"--out {out}: use a {SUFFIXES[fmt]} file name for --format {fmt}")
    written = [out, out.with_suffix(".bin")] if fmt == "openvino" else [out]  # an IR is a .xml + .bin pair
    existing = [str(f) for f in written if f.exists()]
    if existing and not args.overwrite:
        one = len(existing) == 1
        raise ConfigError(f"{' and '.join(existing)} already exist{'s' if one else ''}; pass --overwrite to "
                          f"replace {'it' if one else 'them'} or choose another --out")
    if args.int8 != bool(args.calib_data):
        raise ConfigError("--int8 needs --calib-data DIR (images to calibrate on), and --calib-data needs --int8")
    if fmt == "openvino":
        if args.int8:
            result = OV.export_openvino_int8(args.checkpoint, out, args.calib_data, calib_images=args.calib_images,
                                             split=args.calib_split, min_agreement=args.int8_min_agreement,
                                             opset=args.opset)
        else:
            result = OV.export_openvino(args.checkpoint, out, opset=args.opset, exporter=args.exporter,
                                        rtol=args.rtol, min_agreement=args.min_agreement)
    elif args.int8:
        result = export_int8(args.checkpoint, out, args.calib_data, calib_images=args.calib_images,
                             split=args.calib_split, min_agreement=args.int8_min_agreement, opset=args.opset)
    else:
        result = export_onnx(args.checkpoint, out, opset=args.opset, exporter=args.exporter,
                             rtol=args.rtol, min_agreement=args.min_agreement)
    for note in result.notes:
        print(f"fcnseg export: note: {note}")
    print(result.summary())
    return 0


__all__ = ["add_cli_arguments", "cli_main", "SUFFIXES"]
