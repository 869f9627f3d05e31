"""``fcnseg bench``: how fast the models run here, and how close to this machine's limit.

Sections (``--sections``, all by default):

- ``peak``: the machine's dense matmul rate (``torch.mm``, fp32 and bf16; fp16/TF32 on
  CUDA) with the same threads: the yardstick for the models' GFLOP/s.
- ``inference``: per model, input size and *variant* (fp32 eager, channels-last, the CPU
  fast path of :mod:`fcnseg.models.fastpath`, bf16 autocast / weights, ``torch.compile``,
  onnxruntime; AMP fp16/bf16 on CUDA): latency (median and IQR), images/s, FLOPs counted
  by :func:`fcnseg.models.count_flops`, achieved GFLOP/s and its fraction of the matmul
  peak, argmax agreement with fp32. The caffe geometry runs the fp32 variant for the
  modern-vs-caffe comparison. On CUDA with torchvision importable, torchvision's
  ``fcn_resnet50`` runs beside them (torchvision is imported only there).
- ``train``: training images/s (forward + backward + SGD step) at a crop size.
- ``loader``: data-loader images/s on camvid-voc with the training transforms.
- ``metrics``: ConfusionMatrix.update time as a share of evaluation time.
- ``scaling``: latency against input size for both geometries, linear fit in megapixels.

Then the targets of the performance issue are judged (PASS/MISS) from those numbers.
Models have random (He-initialised) weights: speed does not depend on weight values,
and the argmax agreement is measured on real images when the dataset is present.
"""
from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.bench_report import (TARGETS, TORCHVISION_NAME, format_report, judge_targets,
                                 target_values)
from fcnseg.bench_timing import (environment, fit_linear, matmul_peak, peak_rss_mb, synchronizer,
                                 time_callable)
from fcnseg.engine.workers import default_workers, resolve_workers
from fcnseg.errors import ConfigError, FcnsegError

SCHEMA = "fcnseg-bench/1"
SECTIONS = ("peak", "inference", "train", "loader", "metrics", "scaling")
# <repo>/../shared/data/camvid-voc for a source checkout (src layout: this file is src/fcnseg/).
DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "camvid-voc"


@dataclass(frozen=True)
class Variant:
    """One way of running a model. ``precision`` picks the matmul peak it is compared with."""

    name: str
    devices: tuple[str, ...]
    precision: dict[str, str]  # device type -> "fp32" | "bf16" | "fp16"
    description: str


_V = Variant
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    _V("fp32", ("cpu", "cuda"), {"cpu": "fp32", "cuda": "fp32"},
       "eager PyTorch, float32, NCHW: the default inference path"),
    _V("channels_last", ("cpu", "cuda"), {"cpu": "fp32", "cuda": "fp32"},
       "eager, float32, model and input channels-last (NHWC)"),
    _V("fastpath", ("cpu",), {"cpu": "fp32"},
       "fcnseg.models.fastpath: oneDNN weights packed once, conv+ReLU fused, fc6/fc7 as GEMMs, NHWC"),
    _V("bf16_autocast", ("cpu",), {"cpu": "bf16"}, "torch.autocast('cpu', bfloat16), NCHW"),
    _V("bf16_autocast_cl", ("cpu",), {"cpu": "bf16"}, "torch.autocast('cpu', bfloat16), channels-last"),
    _V("bf16_weights", ("cpu",), {"cpu": "bf16"}, "model and input cast to bfloat16, channels-last"),
    _V("bf16_fastpath", ("cpu",), {"cpu": "bf16"}, "the fast path with bfloat16 weights and activations"),
    _V("amp_fp16", ("cuda",), {"cuda": "fp16"}, "torch.autocast('cuda', float16), NCHW"),
    _V("amp_bf16", ("cuda",), {"cuda": "bf16"}, "torch.autocast('cuda', bfloat16), NCHW"),
    _V("amp_fp16_cl", ("cuda",), {"cuda": "fp16"}, "torch.autocast('cuda', float16), channels-last"),
    _V("compile", ("cpu", "cuda"), {"cpu": "fp32", "cuda": "fp16"},
       "torch.compile (inductor; CPU: fp32 with freezing=True; CUDA: AMP fp16, channels-last)"),
    _V("onnxruntime", ("cpu", "cuda"), {"cpu": "fp32", "cuda": "fp32"},
       "fcnseg.export ONNX (opset 18) on onnxruntime, intra-op threads = --threads"),
)}
QUICK_VARIANTS = {"cpu": ("fp32", "fastpath", "bf16_autocast"), "cuda": ("fp32", "amp_fp16", "amp_fp16_cl")}
# The caffe geometry runs only these (it is there to compare geometries, not runtimes):
# the default path, and the fast path, whose small fixed costs let the FLOP ratio show.
CAFFE_VARIANTS = ("fp32", "fastpath")
# torchvision's fcn_resnet50 on CUDA: the PyTorch variants that apply to any nn.Module.
TORCHVISION_VARIANTS = ("fp32", "channels_last", "amp_fp16", "amp_bf16", "amp_fp16_cl", "compile")


@dataclass
class BenchConfig:
    """Everything a bench run depends on (goes into the JSON as ``config``)."""

    models: list[str] = field(default_factory=lambda: ["fcn8s_vgg16"])
    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(360, 480)])
    batch: int = 1
    threads: int = 2
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 5
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    variants: list[str] = field(default_factory=lambda: ["fp32"])
    geometries: list[str] = field(default_factory=lambda: ["modern", "caffe"])
    num_classes: int = 21
    model_kwargs: dict = field(default_factory=dict)  # for the fcn*_small models (e.g. width)
    peak_sizes: list[int] = field(default_factory=lambda: [2048, 3072])
    train_crop: int = 256
    train_batch: int = 2
    train_repeats: int = 3
    workers: int = field(default_factory=default_workers)  # usable CPUs - 1
    data: str | None = str(DEFAULT_DATA)
    loader_batches: int = 4   # batches per timed chunk
    loader_repeats: int = 5   # timed chunks
    metric_images: int = 4
    scaling_model: str = "fcn8s_vgg16"
    scaling_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024])
    scaling_geometries: list[str] = field(default_factory=lambda: ["modern", "caffe"])
    scaling_variant: str = "fp32"
    scaling_repeats: int = 3
    seed: int = 0


class VariantSkipped(Exception):
    """A variant cannot run here (backend missing or failed); the reason goes into the report."""


# ----------------------------------------------------------------------------- models, inputs

def _kwargs(name: str, cfg: BenchConfig) -> dict:
    """Backbone options apply to the configurable small backbone only (``--width``)."""
    return cfg.model_kwargs if name.endswith("_small") else {}


def random_model(name: str, num_classes: int, geometry: str = "modern", seed: int = 0,
                 **model_kwargs) -> nn.Module:
    """``build_model`` with He-initialised convolutions (zero-initialised score layers would
    give all-zero logits, and argmax agreement would be trivially 100%). Eval mode."""
    from fcnseg.models import build_model

    torch.manual_seed(seed)
    model = build_model(name, num_classes, geometry=geometry, **model_kwargs)
    for m in model.modules():
        if type(m) is nn.Conv2d:  # transposed convs keep their bilinear kernels
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.eval()


def example_batch(size: tuple[int, int], batch: int, data: str | None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``(B, 3, H, W)`` normalised images: camvid val images cropped/padded to ``size`` when the
    dataset is there (realistic activations for the agreement check), else seeded noise."""
    H, W = size
    if data and Path(data).is_dir():
        from fcnseg.data.datasets import open_dataset
        from fcnseg.data.transforms import eval_transforms

        ds = open_dataset(data, "val", eval_transforms())
        x = torch.zeros(batch, 3, H, W)
        for i in range(batch):
            img, _ = ds[i % len(ds)]  # (3, h, w)
            h, w = min(H, img.shape[1]), min(W, img.shape[2])
            x[i, :, :h, :w] = img[:, :h, :w]  # zero padding = the mean colour after normalising
        return x, f"{data} val images 0..{batch - 1}, cropped/zero-padded to {H}x{W}"
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, H, W, generator=gen), "seeded standard normal noise (no dataset)"


class _OutOnly(nn.Module):
    """torchvision segmentation models return ``{"out": logits, ...}``; keep the logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def torchvision_fcn_resnet50(num_classes: int) -> nn.Module:
    """torchvision's ``fcn_resnet50`` (random weights), for the CUDA comparison only.

    Imported here and only here: torchvision does not load with the CPU torch build this
    project develops on. Raises VariantSkipped if it cannot be imported.
    """
    try:
        from torchvision.models.segmentation import fcn_resnet50
    except (ImportError, RuntimeError, AttributeError) as e:  # absent, or built for another torch
        raise VariantSkipped(f"torchvision not importable ({type(e).__name__}: {str(e)[:200]})") from None
    torch.manual_seed(0)
    return _OutOnly(fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes,
                                 aux_loss=False)).eval()


def _cast_copy(model: nn.Module, dtype: torch.dtype | None, device: torch.device | None = None) -> nn.Module:
    """A copy of ``model`` with floating tensors cast to ``dtype`` and/or moved to ``device``;
    the original is untouched and never duplicated as it is (deepcopy's memo maps each
    tensor straight to its converted copy)."""
    memo: dict[int, object] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        cast = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else None)
        memo[id(t)] = nn.Parameter(cast, requires_grad=False) if isinstance(t, nn.Parameter) else cast
    return copy.deepcopy(model, memo)


# ----------------------------------------------------------------------------- variants

@dataclass
class Prepared:
    """A ready-to-time variant: ``fn()`` runs one batch and returns float logits."""

    fn: Callable[[], torch.Tensor]
    setup_s: float
    notes: list[str] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None  # frees what the variant cached (compiled graphs)


def prepare_variant(name: str, model: nn.Module, x: torch.Tensor, device: torch.device,
                    threads: int) -> Prepared:
    """Set up variant ``name`` for ``model`` on input ``x`` (already on ``device``).

    Raises VariantSkipped with the reason when the backend is missing or fails here.
    """
    spec = VARIANTS[name]
    if device.type not in spec.devices:
        raise VariantSkipped(f"{name} runs on {'/'.join(spec.devices)} only")
    t0 = time.perf_counter()
    cl = torch.channels_last
    if name == "fp32":
        return Prepared(lambda: model(x), 0.0)
    if name == "channels_last":
        m = _layout_copy(model, cl)
        xc = x.contiguous(memory_format=cl)
        return Prepared(lambda: m(xc), time.perf_counter() - t0)
    if name in ("fastpath", "bf16_fastpath"):
        from fcnseg.models.fastpath import fastpath_unavailable, optimize_for_cpu_inference

        reason = fastpath_unavailable()
        if reason:
            raise VariantSkipped(reason)
        dtype = torch.bfloat16 if name == "bf16_fastpath" else torch.float32
        m = optimize_for_cpu_inference(model, tuple(x.shape[-2:]), dtype=dtype)
        return Prepared(lambda: m(x).float(), time.perf_counter() - t0)
    if name in ("bf16_autocast", "bf16_autocast_cl", "amp_fp16", "amp_bf16", "amp_fp16_cl"):
        dtype = torch.float16 if "fp16" in name else torch.bfloat16
        if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise VariantSkipped("this GPU does not support bfloat16")
        m, xx = model, x
        if name.endswith("_cl"):
            m, xx = _layout_copy(model, cl), x.contiguous(memory_format=cl)

        def run() -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype):
                return m(xx).float()
        return Prepared(run, time.perf_counter() - t0)
    if name == "bf16_weights":
        m = _layout_copy(_cast_copy(model, torch.bfloat16), cl)
        xb = x.to(torch.bfloat16).contiguous(memory_format=cl)
        return Prepared(lambda: m(xb).float(), time.perf_counter() - t0)
    if name == "compile":
        return _prepare_compile(model, x, device)
    if name == "onnxruntime":
        return _prepare_onnxruntime(model, x, device, threads)
    raise ValueError(f"unknown variant {name!r}")


def _layout_copy(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """A copy with 4-D weights in ``memory_format`` (the original keeps its layout)."""
    memo: dict[int, object] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.dim() == 4:
            moved = t.detach().contiguous(memory_format=memory_format)
            memo[id(t)] = nn.Parameter(moved, requires_grad=False) if isinstance(t, nn.Parameter) else moved
        else:
            memo[id(t)] = t
    return copy.deepcopy(model, memo)


def _prepare_compile(model: nn.Module, x: torch.Tensor, device: torch.device) -> Prepared:
    """torch.compile: CPU fp32 with inductor's freezing (weights prepacked as constants;
    without it CPU gains nothing); CUDA with AMP fp16 and channels-last. The first call,
    which compiles, is the setup time."""
    if device.type == "cpu" and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
                                     or shutil.which("clang++")):
        raise VariantSkipped("no C++ compiler (g++/c++/clang++) on PATH; inductor needs one on CPU")
    t0 = time.perf_counter()
    try:
        import torch._inductor.config as inductor_config

        if device.type == "cpu":
            compiled = torch.compile(model, dynamic=False)
            with inductor_config.patch(freezing=True):
                compiled(x)  # compiles now, with freezing
            run = lambda: compiled(x)  # noqa: E731
        else:
            m = _layout_copy(model, torch.channels_last)
            xc = x.contiguous(memory_format=torch.channels_last)
            compiled = torch.compile(m, dynamic=False)

            def run() -> torch.Tensor:
                with torch.autocast("cuda", dtype=torch.float16):
                    return compiled(xc).float()
            run()
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as e:
        # Dynamo/inductor failures are RuntimeErrors (compiler missing or failing, triton
        # absent, unsupported op); report them instead of failing the whole bench.
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        torch._dynamo.reset()  # drop whatever the failed compilation cached
        raise VariantSkipped(f"torch.compile failed: {type(e).__name__}: {first}") from None
    # Dynamo's cache (on the model's forward code) holds the compiled graph and its frozen
    # weight copies: reset it when done, or they stay allocated for the rest of the run.
    return Prepared(run, time.perf_counter() - t0, ["setup_s includes compilation"],
                    cleanup=torch._dynamo.reset)


def _prepare_onnxruntime(model: nn.Module, x: torch.Tensor, device: torch.device, threads: int) -> Prepared:
    """Export with :func:`fcnseg.export.export_model` (checked against PyTorch) and run with
    onnxruntime, ``intra_op_num_threads`` = ``threads``."""
    from fcnseg.optional import available, install_hint

    if not available("onnxruntime"):
        raise VariantSkipped(f"onnxruntime is not installed ({install_hint('onnxruntime')})")
    import onnxruntime as ort
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise VariantSkipped("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); "
                                 "CPU-provider timings would not compare with CUDA ones")
        providers.insert(0, "CUDAExecutionProvider")
    from fcnseg.export import export_model

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-") as tmp:
        path = Path(tmp) / "model.onnx"
        cpu_model = _cast_copy(model, None, torch.device("cpu")) if device.type != "cpu" else model
        try:
            # The exporters trace the model: that needs normal (non-inference) tensors.
            with torch.inference_mode(False), torch.no_grad():
                report = export_model(cpu_model, path, metadata={}, opset=18)
        except FcnsegError as e:  # export or its onnxruntime-vs-PyTorch check failed
            raise VariantSkipped(f"ONNX export failed: {str(e)[:300]}") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=providers)
    xn = x.detach().cpu().numpy()

    def run() -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"image": xn})[0])
    return Prepared(run, time.perf_counter() - t0,
                    [f"{report.exporter} exporter, opset {report.opset}; setup_s includes export + check",
                     *(["input/output copied host<->device per call"] if device.type == "cuda" else [])])


def _agreement(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of pixels whose argmax over classes equals ``labels``."""
    # max(1).indices, not argmax(1): same result (first maximum), but several times faster
    # on CPU for a reduction over the non-innermost (class) dimension.
    return (logits.max(1).indices == labels).float().mean()


# ----------------------------------------------------------------------------- sections

def bench_peak(device: torch.device, sizes: list[int], warmup: int, repeats: int, threads: int) -> dict:
    """Matmul peak per precision; fp32 is strict fp32 (TF32 off) on CUDA, with TF32 separately."""
    out: dict = {}
    if device.type == "cuda":
        warmup = max(warmup, 3)  # cuBLAS heuristics and GPU clocks settle over the first calls
        prev = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            out["fp32"] = matmul_peak(device, torch.float32, tuple(sizes), warmup=warmup, repeats=repeats)
            torch.backends.cuda.matmul.allow_tf32 = True
            out["tf32"] = matmul_peak(device, torch.float32, tuple(sizes), warmup=warmup, repeats=repeats)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        out["fp16"] = matmul_peak(device, torch.float16, tuple(sizes), warmup=warmup, repeats=repeats)
        if torch.cuda.is_bf16_supported():
            out["bf16"] = matmul_peak(device, torch.bfloat16, tuple(sizes), warmup=warmup, repeats=repeats)
    else:
        for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            out[key] = matmul_peak(device, dtype, tuple(sizes), warmup=warmup, repeats=repeats,
                                   threads=threads)
    return out


def _peak_key(precision: str, device: torch.device, peak: dict | None) -> str:
    """Which peak an fp32 run is compared with: CUDA convs run TF32 when cuDNN allows it."""
    if precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32 and peak and "tf32" in peak:
        return "tf32"
    return precision


def bench_inference(name: str, size: tuple[int, int], cfg: BenchConfig, device: torch.device,
                    peak: dict | None, geometry: str = "modern", variants: list[str] | None = None,
                    x: torch.Tensor | None = None, model: nn.Module | None = None,
                    log: Callable[[str], None] = print) -> list[dict]:
    """One record per variant: latency, throughput, FLOPs, GFLOP/s, fraction of peak, agreement."""
    from fcnseg.models import count_flops

    if model is None:
        model = random_model(name, cfg.num_classes, geometry, cfg.seed, **_kwargs(name, cfg))
    model = model.to(device).eval()
    flops = count_flops(model, size, batch=cfg.batch)
    input_note = "given"
    if x is None:
        x, input_note = example_batch(size, cfg.batch, cfg.data, cfg.seed)
    x = x.to(device)
    base = {"model": name, "geometry": geometry, "size": list(size), "batch": cfg.batch,
            "threads": cfg.threads, "device": str(device), "flops": flops, "input": input_note}
    with torch.inference_mode():
        ref = model(x).float()  # fp32 eager: the reference for agreement
    ref_labels, ref_scale = ref.max(1).indices, float(ref.abs().max())
    records = []
    for vname in variants if variants is not None else cfg.variants:
        rec = {**base, "variant": vname, "description": VARIANTS[vname].description}
        try:
            with torch.inference_mode():
                prep = prepare_variant(vname, model, x, device, cfg.threads)
                timing = time_callable(prep.fn, warmup=cfg.warmup, repeats=cfg.repeats, device=device,
                                       threads=cfg.threads)
                out = prep.fn().float().to(ref.device)  # onnxruntime answers on the host
        except VariantSkipped as e:
            rec.update(status="skipped", reason=str(e))
            log(f"  {name} {geometry} {size[0]}x{size[1]} {vname}: skipped: {e}")
            records.append(rec)
            continue
        precision = VARIANTS[vname].precision[device.type]
        pkey = _peak_key(precision, device, peak)
        has_peak = bool(peak) and pkey in peak
        gflops = flops / timing.median_s / 1e9
        rec.update(
            status="ok", precision=precision, setup_s=prep.setup_s, notes=prep.notes,
            latency=timing.to_dict(), images_per_s=cfg.batch / timing.median_s,
            gflop_per_s=gflops,
            peak_precision=pkey if has_peak else None,
            # Against the best matmul run: noise can only make the peak look lower, so this
            # fraction is never flattered by a slow peak measurement.
            fraction_of_peak=gflops / peak[pkey]["best_gflop_per_s"] if has_peak else None,
            fraction_of_median_peak=gflops / peak[pkey]["gflop_per_s"] if has_peak else None,
            agreement_vs_fp32=float(_agreement(out, ref_labels)),
            max_abs_diff_vs_fp32=float((out - ref).abs().max()), logit_scale=ref_scale,
            peak_rss_mb=peak_rss_mb()["self_mb"],
        )
        log(f"  {name} {geometry} {size[0]}x{size[1]} b{cfg.batch} {vname:16s} "
            f"{1e3 * timing.median_s:9.1f} ms (IQR {1e3 * timing.iqr_s:.1f})  {gflops:7.1f} GFLOP/s"
            + (f"  {100 * rec['fraction_of_peak']:5.1f}% of {pkey} peak" if rec["fraction_of_peak"] else ""))
        records.append(rec)
        if prep.cleanup is not None:
            prep.cleanup()
        del prep, out
        gc.collect()
    return records


def bench_train(name: str, cfg: BenchConfig, device: torch.device) -> dict:
    """Training images/s: zero_grad + forward + cross-entropy + backward + SGD step, fp32."""
    model = random_model(name, cfg.num_classes, "modern", cfg.seed, **_kwargs(name, cfg)).to(device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    gen = torch.Generator().manual_seed(cfg.seed)
    c = cfg.train_crop
    x = torch.randn(cfg.train_batch, 3, c, c, generator=gen).to(device)
    y = torch.randint(0, cfg.num_classes, (cfg.train_batch, c, c), generator=gen).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        loss.backward()
        opt.step()

    timing = time_callable(step, warmup=1, repeats=cfg.train_repeats, device=device, threads=cfg.threads)
    return {"status": "ok", "model": name, "crop": c, "batch": cfg.train_batch, "precision": "fp32",
            "threads": cfg.threads, "step": timing.to_dict(),
            "images_per_s": cfg.train_batch / timing.median_s}


def bench_loader(cfg: BenchConfig, pin_memory: bool = False) -> dict:
    """Data-loader images/s: camvid-voc train split, train_transforms(crop), ``workers`` workers.

    The first batch (worker start-up) is untimed; then ``loader_repeats`` chunks of
    ``loader_batches`` batches are timed. Nothing consumes the batches, so this is the
    loader's own rate, which training could use at most.
    """
    if not cfg.data or not Path(cfg.data).is_dir():
        return {"status": "skipped", "reason": f"dataset not found at {cfg.data} (pass --data DIR)"}
    from torch.utils.data import DataLoader

    from fcnseg.data.datasets import open_dataset
    from fcnseg.data.transforms import pad_collate, train_transforms
    from fcnseg.engine.loader_errors import unwrapped_batches

    ds = open_dataset(cfg.data, "train", train_transforms(cfg.train_crop))
    needed = (1 + cfg.loader_repeats * cfg.loader_batches) * cfg.train_batch
    repeats = cfg.loader_repeats
    if needed > len(ds):  # stay within one epoch: a new epoch restarts the workers
        repeats = max(1, (len(ds) // cfg.train_batch - 1) // cfg.loader_batches)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(ds, batch_size=cfg.train_batch, shuffle=True, num_workers=cfg.workers,
                        collate_fn=pad_collate, drop_last=True, generator=gen, pin_memory=pin_memory)
    it = unwrapped_batches(loader)  # a worker's DataError reaches the user as one line
    next(it)  # warm-up: workers start, first batches are prefetched
    chunk_s = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(cfg.loader_batches):
            next(it)
        chunk_s.append(time.perf_counter() - t0)
    del it, loader
    from fcnseg.bench_timing import Timing

    timing = Timing(chunk_s, warmup=1)
    per_chunk = cfg.loader_batches * cfg.train_batch
    return {"status": "ok", "data": str(cfg.data), "images": len(ds), "crop": cfg.train_crop,
            "batch": cfg.train_batch, "workers": cfg.workers, "chunk": timing.to_dict(),
            "images_per_chunk": per_chunk, "images_per_s": per_chunk / timing.median_s}


def bench_metrics(name: str, cfg: BenchConfig, device: torch.device) -> dict:
    """ConfusionMatrix.update (argmax of the logits + counting) as a share of evaluation time
    (forward + update), over the first ``metric_images`` val images at their own size."""
    from fcnseg.metrics import ConfusionMatrix

    if cfg.data and Path(cfg.data).is_dir():
        from fcnseg.data.datasets import open_dataset
        from fcnseg.data.transforms import eval_transforms

        ds = open_dataset(cfg.data, "val", eval_transforms())
        n_classes = ds.num_classes
        items = [ds[i] for i in range(min(cfg.metric_images, len(ds)))]
        source = f"{cfg.data} val, {len(items)} images"
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        n_classes = cfg.num_classes
        H, W = cfg.sizes[0]
        items = [(torch.randn(3, H, W, generator=gen), torch.randint(0, n_classes, (H, W), generator=gen))
                 for _ in range(cfg.metric_images)]
        source = f"random {H}x{W} images (no dataset at {cfg.data})"
    model = random_model(name, n_classes, "modern", cfg.seed, **_kwargs(name, cfg)).to(device)
    cm = ConfusionMatrix(n_classes)
    sync = synchronizer(device)
    fwd_s, upd_s = [], []
    with torch.inference_mode():
        model(items[0][0][None].to(device))  # warm-up (oneDNN primitive creation, allocations)
        for img, mask in items:
            x, y = img[None].to(device), mask[None].to(device)
            sync()
            t0 = time.perf_counter()
            logits = model(x)
            sync()
            t1 = time.perf_counter()
            cm.update(logits, y)
            sync()
            fwd_s.append(t1 - t0)
            upd_s.append(time.perf_counter() - t1)
    fwd, upd = sum(fwd_s), sum(upd_s)
    return {"status": "ok", "model": name, "source": source, "images": len(items),
            "forward_ms": [1e3 * t for t in fwd_s], "update_ms": [1e3 * t for t in upd_s],
            "forward_total_ms": 1e3 * fwd, "update_total_ms": 1e3 * upd, "share": upd / (fwd + upd)}


def bench_scaling(cfg: BenchConfig, device: torch.device, log: Callable[[str], None] = print) -> dict:
    """Latency against input size (square inputs) per geometry; ms = slope * Mpx + intercept."""
    from fcnseg.models import count_flops

    out: dict = {"model": cfg.scaling_model, "variant": cfg.scaling_variant, "batch": 1,
                 "threads": cfg.threads, "geometries": {}}
    sub = BenchConfig(**{**asdict(cfg), "batch": 1, "warmup": 1, "repeats": cfg.scaling_repeats,
                         "data": None})
    for geometry in cfg.scaling_geometries:
        model = random_model(cfg.scaling_model, cfg.num_classes, geometry, cfg.seed,
                             **_kwargs(cfg.scaling_model, cfg))
        points = []
        for s in cfg.scaling_sizes:
            gen = torch.Generator().manual_seed(cfg.seed)
            x = torch.randn(1, 3, s, s, generator=gen)
            rec = bench_inference(cfg.scaling_model, (s, s), sub, device, None, geometry,
                                  [cfg.scaling_variant], x=x, model=model, log=log)[0]
            if rec["status"] != "ok":
                points.append({"size": s, "status": rec["status"], "reason": rec.get("reason")})
                continue
            ms = rec["latency"]["median_ms"]
            points.append({"size": s, "megapixels": s * s / 1e6, "median_ms": ms,
                           "iqr_ms": rec["latency"]["iqr_ms"], "flops": count_flops(model, (s, s)),
                           "gflop_per_s": rec["gflop_per_s"], "ms_per_megapixel": ms / (s * s / 1e6)})
        ok = [p for p in points if "median_ms" in p]
        fit = fit_linear([p["megapixels"] for p in ok], [p["median_ms"] for p in ok]) if len(ok) >= 2 else None
        out["geometries"][geometry] = {"points": points, "fit_ms_vs_megapixels": fit}
        del model
        gc.collect()
    return out


# ----------------------------------------------------------------------------- driver

def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Run the selected sections; returns the JSON-ready result (also judged against TARGETS)."""
    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown --sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    bad = [v for v in cfg.variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"unknown --variants {bad}; choose from {', '.join(VARIANTS)}")
    device = torch.device(cfg.device)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    prev_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    t_start = time.perf_counter()
    result: dict = {"schema": SCHEMA, "config": asdict(cfg), "environment": environment(device, cfg.threads),
                    "weights": "random, He-initialised convolutions (speed does not depend on values)",
                    "peak_rss": []}

    def rss(stage: str) -> None:
        result["peak_rss"].append({"after": stage, **peak_rss_mb()})

    try:
        peak = None
        if "peak" in cfg.sections:
            log(f"[peak] torch.mm n in {cfg.peak_sizes}, {cfg.threads} threads")
            peak = result["peak"] = bench_peak(device, cfg.peak_sizes, 1, cfg.repeats, cfg.threads)
            for k, p in peak.items():
                log(f"  {k:5s} n={p['n']}: {p['gflop_per_s']:.1f} GFLOP/s median, {p['best_gflop_per_s']:.1f} best")
            rss("peak")
        if "inference" in cfg.sections:
            log(f"[inference] warm-up {cfg.warmup}, {cfg.repeats} timed runs each")
            records: list[dict] = []
            for name, size in itertools.product(cfg.models, cfg.sizes):
                for geometry in cfg.geometries:
                    vs = cfg.variants if geometry == "modern" else [v for v in cfg.variants if v in CAFFE_VARIANTS]
                    if vs:
                        records += bench_inference(name, size, cfg, device, peak, geometry, vs, log=log)
                        rss(f"inference {name} {geometry} {size[0]}x{size[1]}")
            records += _torchvision_records(cfg, device, peak, log)
            result["inference"] = records
        if "train" in cfg.sections:
            log(f"[train] {cfg.models[0]} crop {cfg.train_crop} batch {cfg.train_batch}")
            result["train"] = bench_train(cfg.models[0], cfg, device)
            log(f"  {result['train']['images_per_s']:.2f} images/s")
            rss("train")
        if "loader" in cfg.sections:
            log(f"[loader] {cfg.data}, {cfg.workers} workers, crop {cfg.train_crop}")
            result["loader"] = bench_loader(cfg, pin_memory=device.type == "cuda")
            log(f"  {result['loader'].get('images_per_s', 0):.1f} images/s" if result["loader"]["status"] == "ok"
                else f"  skipped: {result['loader']['reason']}")
            rss("loader")
        if "metrics" in cfg.sections:
            log(f"[metrics] ConfusionMatrix.update vs forward, {cfg.models[0]}")
            result["metrics"] = bench_metrics(cfg.models[0], cfg, device)
            log(f"  update share {100 * result['metrics']['share']:.2f}% of evaluation time")
            rss("metrics")
        if "scaling" in cfg.sections:
            log(f"[scaling] {cfg.scaling_model} {cfg.scaling_variant}, sizes {cfg.scaling_sizes}")
            result["scaling"] = bench_scaling(cfg, device, log)
            rss("scaling")
    finally:
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_benchmark
    result["targets"] = judge_targets(target_values(result))
    result["environment"]["loadavg_1m_end"] = _loadavg()
    result["elapsed_s"] = time.perf_counter() - t_start
    return result


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _torchvision_records(cfg: BenchConfig, device: torch.device, peak: dict | None,
                         log: Callable[[str], None]) -> list[dict]:
    """torchvision fcn_resnet50 beside ours, on CUDA only (never imported on CPU)."""
    base = {"model": TORCHVISION_NAME, "geometry": "modern", "size": list(cfg.sizes[0]), "batch": cfg.batch,
            "threads": cfg.threads, "device": str(device), "variant": "-"}
    if device.type != "cuda":
        return [{**base, "status": "skipped",
                 "reason": "the torchvision comparison runs on CUDA only; torchvision is not imported on CPU"}]
    try:
        tv = torchvision_fcn_resnet50(cfg.num_classes)
    except VariantSkipped as e:
        log(f"  {TORCHVISION_NAME}: skipped: {e}")
        return [{**base, "status": "skipped", "reason": str(e)}]
    variants = [v for v in cfg.variants if v in TORCHVISION_VARIANTS]
    return [r for size in cfg.sizes
            for r in bench_inference(TORCHVISION_NAME, size, cfg, device, peak, "modern", variants,
                                     model=tv, log=log)]


# ----------------------------------------------------------------------------- CLI

def _parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.strip().lower().partition("x")
    try:
        size = (int(h), int(w or h))
    except ValueError:
        raise ConfigError(f"bad size {text!r}: use HxW or N, e.g. 360x480") from None
    if min(size) < 1:
        raise ConfigError(f"bad size {text!r}: must be >= 1")
    return size


def _csv(text: str) -> list[str]:
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
                   help=f"comma-separated inference variants (default: all for the device): {','.join(VARIANTS)}")
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
                   help="fewer repeats and variants (fp32, fastpath, bf16_autocast), smaller scaling sizes")
    p.add_argument("--json", metavar="PATH", default=None, help="write the full result as JSON")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Resolve CLI arguments (``--quick`` and device-dependent defaults) into a BenchConfig."""
    from fcnseg.api import resolve_device
    from fcnseg.models import list_models

    device = resolve_device(args.device)
    dtype = torch.device(device).type
    models = _csv(args.models)
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ConfigError(f"unknown --models {unknown}; see `fcnseg models`")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    threads = args.threads or usable
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    q = args.quick
    if args.variants:
        variants = _csv(args.variants)
    else:
        variants = list(QUICK_VARIANTS[dtype]) if q else [n for n, v in VARIANTS.items() if dtype in v.devices]
    geometries = _csv(args.geometries)
    if set(geometries) - {"modern", "caffe"}:
        raise ConfigError(f"--geometries must be modern and/or caffe, got {args.geometries!r}")
    try:
        scaling = ([int(s) for s in _csv(args.scaling_sizes)] if args.scaling_sizes
                   else ([256, 512] if q else [256, 512, 1024]))
    except ValueError:
        raise ConfigError(f"--scaling-sizes {args.scaling_sizes!r}: use comma-separated integers") from None
    if args.scaling_variant not in VARIANTS:
        raise ConfigError(f"unknown --scaling-variant {args.scaling_variant!r}; choose from {', '.join(VARIANTS)}")
    if args.width is not None and not any(m.endswith("_small") for m in models + [args.scaling_model]):
        raise ConfigError("--width applies to the fcn*_small models only, and none is selected")
    if args.scaling_model not in list_models():
        raise ConfigError(f"unknown --scaling-model {args.scaling_model!r}; see `fcnseg models`")
    for name, v in (("--batch", args.batch), ("--train-batch", args.train_batch), ("--train-crop", args.train_crop)):
        if v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    return BenchConfig(
        models=models, sizes=[_parse_size(s) for s in _csv(args.sizes)], batch=args.batch,
        threads=threads, device=device, warmup=args.warmup if args.warmup is not None else (1 if q else 2),
        repeats=args.repeats or (3 if q else 5), sections=_csv(args.sections), variants=variants,
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
    print(format_report(result))
    if args.json:
        from fcnseg.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=1, default=_json_default) + "\n")
        print(f"wrote {args.json}")
    return 0


def _json_default(obj: object) -> object:
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


__all__ = ["BenchConfig", "run_bench", "bench_inference", "bench_peak", "bench_train", "bench_loader",
           "bench_metrics", "bench_scaling", "judge_targets", "target_values", "format_report",
           "TARGETS", "VARIANTS", "SECTIONS"]
