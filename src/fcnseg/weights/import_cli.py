"""``fcnseg import SOURCE ...``: convert weights from other implementations into fcnseg checkpoints.

Each importer module provides ``add_import_arguments(parser)`` and ``run_import(args) -> int``;
only the chosen one is imported (some need optional packages).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# source -> (module, one-line help)
IMPORTERS: dict[str, tuple[str, str]] = {
    "pytorch-fcn": ("fcnseg.weights.pytorch_fcn",
                    "wkentaro/pytorch-fcn checkpoints (FCN32s/16s/8s/8sAtOnce, e.g. fcn8s_from_caffe.pth)"),
    "torchvision": ("fcnseg.weights.torchvision_fcn",
                    "torchvision's fcn_resnet50 / fcn_resnet101 (e.g. fcn_resnet50_coco-1167a1af.pth)"),
}


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    argv = sys.argv[1:]
    wanted = argv[argv.index("import") + 1] if "import" in argv[:-1] else None
    for name, (module, help_) in IMPORTERS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:
            importlib.import_module(module).add_import_arguments(p)


def cli_main(args: argparse.Namespace) -> int:
    return int(importlib.import_module(IMPORTERS[args.source][0]).run_import(args) or 0)
