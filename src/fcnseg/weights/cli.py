"""``fcnseg weights``: the table of known weight files; ``--download NAME`` fetches one into the cache.

    fcnseg weights                      # markdown table (name, what, URL, hash, size, input, accuracy, cached)
    fcnseg weights --json               # the same as JSON
    fcnseg weights --download vgg16_imagenet
"""
from __future__ import annotations

import argparse
import json

from fcnseg.weights import hub
from fcnseg.weights.catalog import WeightSpec, get_weights, list_weights

KINDS = ("backbone", "torchvision", "pytorch-fcn", "caffe")


def weights_table(kind: str | None = None) -> list[dict]:
    """One row per catalog entry, with whether its file is already available locally."""
    rows = []
    for spec in list_weights(kind):
        local = spec.resolve(spec, False)
        rows.append({"name": spec.name, "file": spec.filename, "what": spec.description, "kind": spec.kind,
                     "arch": spec.arch, "url": spec.url, "checksum": spec.checksum, "size": spec.size,
                     "input_convention": spec.input_convention, "accuracy": spec.accuracy,
                     "source": spec.source, "use": spec.use, "cached": str(local) if local else None})
    return rows


def format_markdown(rows: list[dict]) -> str:
    """The table as markdown; sources of the reported accuracies as numbered notes below it."""
    sources: list[str] = []
    lines = ["| name | what it is | file / URL | checksum | size | input | reported accuracy | in cache | use |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["source"] not in sources:
            sources.append(r["source"])
        note = sources.index(r["source"]) + 1
        url = f"[{r['file']}]({r['url']})" if r["url"] else r["file"]
        lines.append(f"| {r['name']} | {r['what']} | {url} | {r['checksum']} | {r['size']} | "
                     f"{r['input_convention']} | {r['accuracy']} [{note}] | {'yes' if r['cached'] else 'no'} | "
                     f"`{r['use']}` |")
    lines.append("")
    lines += [f"[{i}] {s}" for i, s in enumerate(sources, 1)]
    lines.append(f"\nCache: {hub.cache_dir()} (torch hub's; set TORCH_HOME to move it). Input: the pixel "
                 f"values the weights expect; fcnseg models convert the standard input themselves.")
    return "\n".join(lines)


def download_weights(name: str) -> WeightSpec:
    """Fetch catalog entry ``name`` into its place (torch hub's cache by default); returns its spec."""
    spec = get_weights(name)
    spec.resolve(spec, True)
    return spec


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--download", metavar="NAME", help="fetch one file (a name or file name from the table) "
                                                      "into the cache")
    p.add_argument("--kind", choices=KINDS, help="list only this kind")
    p.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")


def cli_main(args: argparse.Namespace) -> int:
    if args.download:
        spec = download_weights(args.download)
        print(f"{spec.name}: {spec.resolve(spec, False)}")
        print(f"use it with: {spec.use}")
        return 0
    rows = weights_table(args.kind)
    print(json.dumps(rows, indent=1) if args.json else format_markdown(rows))
    return 0
