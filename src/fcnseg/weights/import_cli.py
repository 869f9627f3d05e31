"""``fcnseg import SOURCE ...``: weights from other frameworks as ordinary fcnseg files.

Each importer is a module with ``add_import_arguments(parser)`` and ``run_import(args) -> int``,
listed in :data:`IMPORTERS`; only the chosen one is imported (its optional dependencies,
e.g. protobuf for Caffe, are needed only when it runs).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# source -> (module, one-line help)
IMPORTERS: dict[str, tuple[str, str]] = {
    "caffe": ("fcnseg.weights.caffe",
              "the paper's Caffe FCNs (.caffemodel) -> fcnseg checkpoint; VGG16 -> --backbone-weights"),
    "pytorch-fcn": ("fcnseg.weights.pytorch_fcn",
                    "wkentaro/pytorch-fcn checkpoints (FCN32s/16s/8s/8sAtOnce, e.g. fcn8s_from_caffe.pth)"),
    "torchvision": ("fcnseg.weights.torchvision_fcn",
                    "torchvision's fcn_resnet50 / fcn_resnet101 (e.g. fcn_resnet50_coco-1167a1af.pth)"),
}


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="importer", metavar="SOURCE",
                           help="where the weights come from: " + ", ".join(IMPORTERS))
    argv = sys.argv[1:]
    wanted = argv[argv.index("import") + 1] if "import" in argv and argv.index("import") + 1 < len(argv) else None
    for name, (module, help_) in IMPORTERS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if name == wanted:
            importlib.import_module(module).add_import_arguments(sp)


def cli_main(args: argparse.Namespace) -> int:
    if not getattr(args, "importer", None):
        print("usage: fcnseg import {" + ",".join(IMPORTERS) + "} ...  (fcnseg import SOURCE --help)",
              file=sys.stderr)
        return 2
    return int(importlib.import_module(IMPORTERS[args.importer][0]).run_import(args) or 0)
