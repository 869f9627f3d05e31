"""The catalogue of runtime variants (ways of running one model) and their set-up for timing.

A variant is timed by :func:`fcnseg.bench.sections.bench_inference`; ``benchmarks/compare_variants.py``
and ``benchmarks/profile_fcn.py`` use :func:`prepare_variant` directly.
"""
from __future__ import annotations

import copy
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.export import export_model
from fcnseg.models.fastpath import fastpath_unavailable, optimize_for_cpu_inference
from fcnseg.precision import DTYPES, auto_precision
from fcnseg.quantize import quantize_onnx
from fcnseg.optional import available, install_hint


@dataclass(frozen=True)
class Variant:
    """One way of running a model. ``precision`` picks the matmul peak it is compared with."""

    name: str
    devices: tuple[str, ...]
    precision: dict[str, str]  # device type -> "fp32" | "bf16" | "fp16"
    description: str


_V = Variant
RUNTIME_VARIANTS: dict[str, Variant] = {v.name: v for v in (
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
    # int8 and auto are never fp32 rows: counting them as fp32 would let int8's speed pass the fp32
    # targets and make the bf16 speed-up look like a loss (seen on 2026-12-03). int8 has no matmul
    # peak row, so no %peak; auto's row takes the precision its probe chose (Prepared.precision).
    _V("int8_onnx", ("cpu",), {"cpu": "int8"},
       "fcnseg export --int8: onnxruntime quantize_static QDQ (calibrated on the example batch), intra-op "
       "threads = --threads; no %peak (int8 has no matmul peak row)"),
    _V("auto", ("cpu",), {"cpu": "auto"},
       "--precision auto: the fast path in the precision the measured probe chose (fcnseg.precision)"),
)}
QUICK_VARIANTS = {"cpu": ("fp32", "fastpath", "bf16_autocast", "auto"), "cuda": ("fp32", "amp_fp16", "amp_fp16_cl")}
# The caffe geometry runs only these (it is there to compare geometries, not runtimes):
# the default path, and the fast path, whose small fixed costs let the FLOP ratio show.
CAFFE_VARIANTS = ("fp32", "fastpath")
# torchvision's fcn_resnet50 on CUDA: the PyTorch variants that apply to any nn.Module.
TORCHVISION_VARIANTS = ("fp32", "channels_last", "amp_fp16", "amp_bf16", "amp_fp16_cl", "compile")


class VariantSkipped(Exception):
    """A variant cannot run here (backend missing or failed); the reason goes into the report."""


@dataclass
class Prepared:
    """A ready-to-time variant: ``fn()`` runs one batch and returns float logits."""

    fn: Callable[[], torch.Tensor]
    setup_s: float
    notes: list[str] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None  # frees what the variant cached (compiled graphs)
    precision: str | None = None  # when known only once prepared (auto's choice); else the Variant's


def prepare_variant(name: str, model: nn.Module, x: torch.Tensor, device: torch.device,
                    threads: int) -> Prepared:
    """Set up variant ``name`` for ``model`` on input ``x`` (already on ``device``).

    Raises VariantSkipped with the reason when the backend is missing or fails here.
    """
    spec = RUNTIME_VARIANTS[name]
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
    if name == "int8_onnx":
        return _prepare_onnxruntime(model, x, device, threads, int8=True)
    if name == "auto":
        choice = auto_precision("inference", model)
        if fastpath_unavailable():
            raise VariantSkipped(fastpath_unavailable())
        m = optimize_for_cpu_inference(model, tuple(x.shape[-2:]), dtype=DTYPES[choice.precision])
        return Prepared(lambda: m(x).float(), time.perf_counter() - t0, [f"auto chose {choice.reason}"],
                        precision=choice.precision)
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
        import torch._inductor.config as inductor_config  # lazy: loads the compiler stack

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


def _prepare_onnxruntime(model: nn.Module, x: torch.Tensor, device: torch.device, threads: int,
                         int8: bool = False) -> Prepared:
    """Export with :func:`fcnseg.export.export_model` (checked against PyTorch) and run with
    onnxruntime, ``intra_op_num_threads`` = ``threads``; ``int8``: quantised first
    (:func:`fcnseg.quantize.quantize_onnx`, calibrated on the images of ``x``)."""
    if not available("onnxruntime"):
        raise VariantSkipped(f"onnxruntime is not installed ({install_hint('onnxruntime')})")
    import onnxruntime as ort  # optional dependency (checked just above): only this variant needs it
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise VariantSkipped("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); "
                                 "CPU-provider timings would not compare with CUDA ones")
        providers.insert(0, "CUDAExecutionProvider")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-") as tmp:
        path = Path(tmp) / "model.onnx"
        cpu_model = _cast_copy(model, None, torch.device("cpu")) if device.type != "cpu" else model
        try:
            # The exporters trace the model: that needs normal (non-inference) tensors.
            with torch.inference_mode(False), torch.no_grad():
                exported = export_model(cpu_model, path, metadata={}, opset=18)
        except FcnsegError as e:  # export or its onnxruntime-vs-PyTorch check failed
            raise VariantSkipped(f"ONNX export failed: {str(e)[:300]}") from None
        model_bytes = path.read_bytes()
        if int8:
            xs = [xi[None] for xi in x.detach().float().cpu().numpy()]  # (1, 3, H, W) each
            model_bytes = quantize_onnx(model_bytes, xs)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(model_bytes, opts, providers=providers)
    xn = x.detach().cpu().numpy()

    def run() -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"image": xn})[0])
    return Prepared(run, time.perf_counter() - t0,
                    [f"{exported.exporter} exporter, opset {exported.opset}; setup_s includes export + check",
                     *(["input/output copied host<->device per call"] if device.type == "cuda" else [])])


def _cast_copy(model: nn.Module, dtype: torch.dtype | None, device: torch.device | None = None) -> nn.Module:
    """A copy of ``model`` with floating tensors cast to ``dtype`` and/or moved to ``device``;
    the original is untouched and never duplicated as it is (deepcopy's memo maps each
    tensor straight to its converted copy)."""
    memo: dict[int, object] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        cast = t.detach().to(device=device, dtype=dtype if t.is_floating_point() else None)
        memo[id(t)] = nn.Parameter(cast, requires_grad=False) if isinstance(t, nn.Parameter) else cast
    return copy.deepcopy(model, memo)
