"""Command line: ``fcnseg <command> ...``, a thin layer over plain functions.

Each subcommand lives in its own module, which provides
``add_cli_arguments(parser)`` and ``cli_main(args) -> int``. Modules are imported
only when their command runs, so ``fcnseg predict --runtime onnx`` never imports
the training stack.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings
from typing import Iterator

from fcnseg.engine.loader_errors import unwrap_worker_error
from fcnseg.errors import DataWarning, FcnsegError
from fcnseg.version import __version__

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("fcnseg.models.table", "list registered models (parameters, GFLOPs)"),
    "train": ("fcnseg.engine.train", "train an FCN on your images and masks (VOC layout or images/ + masks/)"),
    "eval": ("fcnseg.engine.evaluate", "evaluate a checkpoint (confusion matrix, mIoU, BF score)"),
    "predict": ("fcnseg.predict", "segment images: palette PNGs, overlays, heatmaps"),
    "export": ("fcnseg.export_cli", "export a checkpoint to ONNX or OpenVINO, checked against PyTorch"),
    "bench": ("fcnseg.bench.cli", "speed benchmark (latency, throughput, GFLOP/s, peak)"),
    "serve": ("fcnseg.serve.cli", "a web page (Gradio) and API that segment uploaded photos"),
    "demo": ("fcnseg.demo", "generate data, train, evaluate and predict in minutes on CPU"),
    "download": ("fcnseg.data.download", "download PASCAL VOC 2012 (checksum verified, resumable)"),
    "convert-masks": ("fcnseg.data.convert_masks", "convert RGB colour masks to class-index palette PNGs"),
    "check-data": ("fcnseg.data.check", "read every image and mask of a dataset; report all problems"),
    "weights": ("fcnseg.weights.cli", "list known pretrained weights (URL, hash, accuracy, cached); fetch one"),
    "import": ("fcnseg.weights.import_cli", "import other implementations' weights (Caffe .caffemodel, pytorch-fcn, torchvision)"),
}


DESCRIPTION = """\
Semantic segmentation with Fully Convolutional Networks (FCN-32s, FCN-16s, FCN-8s;
Long, Shelhamer and Darrell). Train a model on your own images and label masks, evaluate
it, segment new photos, and export it to ONNX; everything runs on a CPU, faster on a GPU."""

EPILOG = """\
a first session:
  fcnseg demo                                    # synthetic data: train, evaluate, predict in minutes
  fcnseg check-data data/mine                    # read every image and mask, report all problems
  fcnseg train --data data/mine --model fcn8s_resnet18 --out runs/mine
  fcnseg eval --checkpoint runs/mine/best.pt --data data/mine --split val
  fcnseg predict --checkpoint runs/mine/best.pt photos/ --out preds

Run `fcnseg COMMAND --help` for the options of a command."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and a pointer to --help), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser(all_commands: bool = False) -> argparse.ArgumentParser:
    """The ``fcnseg`` parser. Only the command named in ``sys.argv[1]`` gets its options (its
    module is imported), unless ``all_commands`` (for tests and documentation)."""
    parser = OneLineErrorParser(prog="fcnseg", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # Only the chosen command's module is imported (fast start, light runtimes).
        if name == wanted or all_commands:
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
        with _one_line_warnings(f"fcnseg {args.command}"):
            return int(module.cli_main(args) or 0)
    except KeyboardInterrupt:
        print("fcnseg: interrupted", file=sys.stderr)
        return 130
    except FcnsegError as e:  # user-facing errors: one clear line, no traceback
        # (unwrap_worker_error: the worker's own message, if a DataLoader worker raised it)
        print(f"fcnseg {args.command}: error: {unwrap_worker_error(e)}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _one_line_warnings(prefix: str) -> Iterator[None]:
    """Show fcnseg's own warnings (DataWarning) as one line ``<prefix>: warning: ...``, each once
    (a dataset opened twice, e.g. for its split and its class scan, warns once)."""
    with warnings.catch_warnings():
        default = warnings.showwarning
        shown: set[str] = set()

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, DataWarning):
                if str(message) not in shown:
                    shown.add(str(message))
                    print(f"{prefix}: warning: {message}", file=sys.stderr, flush=True)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


if __name__ == "__main__":
    sys.exit(main())
