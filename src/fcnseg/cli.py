"""Command line: ``fcnseg <command> ...``, a thin layer over plain functions.

Each subcommand lives in its own module, which provides
``add_cli_arguments(parser)`` and ``cli_main(args) -> int``. Modules are imported
only when their command runs, so ``fcnseg predict --runtime onnx`` never imports
the training stack.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from fcnseg.errors import FcnsegError
from fcnseg.version import __version__

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("fcnseg.models.table", "list registered models (parameters, GFLOPs)"),
    "train": ("fcnseg.engine.train", "train an FCN on a VOC-layout dataset"),
    "eval": ("fcnseg.engine.evaluate", "evaluate a checkpoint (confusion matrix, mIoU, BF score)"),
    "predict": ("fcnseg.predict", "segment images: palette PNGs, overlays, heatmaps"),
    "export": ("fcnseg.export", "export a checkpoint to ONNX, checked against PyTorch"),
    "bench": ("fcnseg.bench.cli", "speed benchmark (latency, throughput, GFLOP/s, peak)"),
    "serve": ("fcnseg.serve.cli", "a web page (Gradio) and API that segment uploaded photos"),
    "demo": ("fcnseg.demo", "generate data, train, evaluate and predict in minutes on CPU"),
    "download": ("fcnseg.data.download", "download PASCAL VOC 2012 (checksum verified, resumable)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``fcnseg`` parser; only the command named in ``sys.argv`` gets its options (see above)."""
    parser = argparse.ArgumentParser(prog="fcnseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # Only the chosen command's module is imported (fast start, light runtimes).
        if name == wanted:
            importlib.import_module(module).add_cli_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fcnseg`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:])
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "deterministic", False):
        # Lazy, per command: rng imports torch, which the other commands may not need.
        from fcnseg.engine.rng import reproducible_mkl

        reproducible_mkl()  # before any computation: MKL reads it once, at its first call
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.cli_main(args) or 0)
    except KeyboardInterrupt:
        print("fcnseg: interrupted", file=sys.stderr)
        return 130
    except FcnsegError as e:  # user-facing errors: one clear line, no traceback
        print(f"fcnseg {args.command}: error: {e}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
