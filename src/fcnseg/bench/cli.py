"""``fcnseg bench``: command-line options -> :class:`~fcnseg.bench.config.BenchConfig` -> report + JSON."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fcnseg.bench.config import DEFAULT_DATA, SECTIONS, BenchConfig
from fcnseg.bench.run import run_bench
from fcnseg.bench.tables import format_tables
from fcnseg.bench.variants import QUICK_VARIANTS, RUNTIME_VARIANTS
from fcnseg.engine.runtime import resolve_device
from fcnseg.engine.workers import default_workers, resolve_workers, usable_cpus
from fcnseg.errors import ConfigError
from fcnseg.models import list_models
from fcnseg.outputs import atomic_write_text
from fcnseg.sizes import size_pair


def parse_csv(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="fcn8s_vgg16", help="comma-separated model names (default fcn8s_vgg16)")
    p.add_argument("--sizes", default="360x480", help="comma-separated input sizes HxW (default 360x480)")
    p.add_argument("--batch", type=int, default=1, help="inference batch size (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads and onnxruntime intra-op threads (default: usable CPUs)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs before timing (default 2; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5; quick 3)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated inference variants (default: all for the device): {','.join(RUNTIME_VARIANTS)}")
    p.add_argument("--geometries", default="modern,caffe",
                   help="modern and/or caffe (caffe runs only the fp32 and fastpath variants; default both)")
    p.add_argument("--num-classes", type=int, default=21, help="output classes of the benchmarked models")
    p.add_argument("--width", type=int, default=None, help="backbone width of the fcn*_small models")
    p.add_argument("--train-crop", type=int, default=256, help="training/loader crop size (default 256)")
    p.add_argument("--train-batch", type=int, default=2, help="training/loader batch size (default 2)")
    p.add_argument("--workers", type=int, default=None, help=f"data-loader workers (default: the usable CPUs minus one for the "
                        f"main process, at most 8; here {default_workers()})")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="VOC-layout dataset for the loader/metrics sections and realistic inputs "
                        "(default ../shared/data/camvid-voc; skipped if absent)")
    p.add_argument("--scaling-model", default="fcn8s_vgg16", help="model of the scaling section")
    p.add_argument("--scaling-sizes", default=None, help="square sizes (default 256,512,1024; quick 256,512)")
    p.add_argument("--scaling-variant", default="fp32", help="variant timed in the scaling section (default fp32)")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats and variants (fp32, fastpath, bf16_autocast, auto), smaller scaling sizes")
    p.add_argument("--json", metavar="PATH", default=None, help="write the full result as JSON")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Resolve CLI arguments (``--quick`` and device-dependent defaults) into a BenchConfig."""
    device = str(resolve_device(args.device))
    dtype = torch.device(device).type
    models = parse_csv(args.models)
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ConfigError(f"unknown --models {unknown}; see `fcnseg models`")
    threads = args.threads or usable_cpus()
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    q = args.quick
    if args.variants:
        variants = parse_csv(args.variants)
    else:
        variants = list(QUICK_VARIANTS[dtype]) if q else [n for n, v in RUNTIME_VARIANTS.items() if dtype in v.devices]
    geometries = parse_csv(args.geometries)
    if set(geometries) - {"modern", "caffe"}:
        raise ConfigError(f"--geometries must be modern and/or caffe, got {args.geometries!r}")
    try:
        scaling = ([int(s) for s in parse_csv(args.scaling_sizes)] if args.scaling_sizes
                   else ([256, 512] if q else [256, 512, 1024]))
    except ValueError:
        raise ConfigError(f"--scaling-sizes {args.scaling_sizes!r}: use comma-separated integers") from None
    if args.scaling_variant not in RUNTIME_VARIANTS:
        raise ConfigError(f"unknown --scaling-variant {args.scaling_variant!r}; choose from {', '.join(RUNTIME_VARIANTS)}")
    if args.width is not None and not any(m.endswith("_small") for m in models + [args.scaling_model]):
        raise ConfigError("--width applies to the fcn*_small models only, and none is selected")
    if args.scaling_model not in list_models():
        raise ConfigError(f"unknown --scaling-model {args.scaling_model!r}; see `fcnseg models`")
    for name, v in (("--batch", args.batch), ("--train-batch", args.train_batch), ("--train-crop", args.train_crop)):
        if v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    return BenchConfig(
        models=models, sizes=[size_pair(s, "--sizes") for s in parse_csv(args.sizes)], batch=args.batch,
        threads=threads, device=device, warmup=args.warmup if args.warmup is not None else (1 if q else 2),
        repeats=args.repeats or (3 if q else 5), sections=parse_csv(args.sections), variants=variants,
        geometries=geometries, num_classes=args.num_classes,
        model_kwargs={"width": args.width} if args.width else {},
        # GPUs need larger products to reach their peak than 2 CPU cores do.
        peak_sizes=([8192] if q else [4096, 8192]) if dtype == "cuda" else ([2048] if q else [2048, 3072]),
        train_crop=args.train_crop, train_batch=args.train_batch,
        train_repeats=2 if q else 3, workers=resolve_workers(args.workers),
        data=args.data, loader_repeats=3 if q else 5, metric_images=2 if q else 4,
        scaling_model=args.scaling_model, scaling_sizes=scaling, scaling_variant=args.scaling_variant,
        scaling_repeats=2 if q else 3)


def cli_main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 progress on stderr
    result = run_bench(cfg, log=log)
    print(format_tables(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1, default=_json_default) + "\n")
        print(f"wrote {args.json}")
    return 0


def _json_default(obj: object) -> object:
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
