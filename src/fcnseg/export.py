"""``fcnseg export``: checkpoint -> ONNX with dynamic batch/height/width, verified.

The exported graph takes ``image`` float32 (B, 3, H, W), ImageNet-normalised, and
returns ``logits`` float32 (B, C, H, W); B, H and W are dynamic. Class names, palette
and the model config go into ``metadata_props`` (keys in :mod:`fcnseg.infer.onnx_runner`),
so ``fcnseg predict --runtime onnx`` can write palette PNGs and overlays from the
.onnx file alone.

After export the model is ALWAYS run with onnxruntime against PyTorch on several
input sizes (odd ones included, batch 1 and 2): the max abs logit difference must be
<= ``rtol * max |logits| + ATOL`` and argmax agreement >= ``min_agreement``. The file
is written atomically and only after the check passes, so a failed export leaves
nothing behind (nor damages an existing file).

Exporters: ``dynamo`` (``torch.onnx.export(dynamo=True)``, needs onnxscript; emits opset
>= 18) and ``torchscript`` (the legacy tracer, ``dynamo=False``; any opset, deprecated by
PyTorch). ``auto`` tries torchscript first for opset < 18 and dynamo first otherwise, and
falls back to the other if export fails, gives another opset, or fails the check.

``fcnseg export --format openvino`` converts that checked ONNX graph to an OpenVINO IR and checks
it again (:mod:`fcnseg.export_openvino`); the command itself is :mod:`fcnseg.export_cli`.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fcnseg.api import load_model
from fcnseg.constants import IMAGENET_MEAN, IMAGENET_STD
from fcnseg.errors import ConfigError, FcnsegError
from fcnseg import quantize as Q
from fcnseg.infer.onnx_runner import (INPUT_NAME, META_CLASS_NAMES, META_FORMAT, META_INT8, META_MODEL,
                                      META_NORMALIZATION, META_PALETTE, META_PRECISION, META_VERSION,
                                      ONNX_FORMAT, OUTPUT_NAME, import_onnxruntime)
from fcnseg.optional import available, require
from fcnseg.outputs import atomic_write
from fcnseg.version import __version__

# (B, H, W) checked after export: odd, non-multiple-of-32 sizes and a batch of 2.
# The tiny one catches size-dependent branches (e.g. padding small inputs) baked in by tracing.
CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 64, 64), (1, 37, 83), (2, 101, 59), (1, 9, 13))
DEFAULT_RTOL = 1e-3          # max |onnx - torch| <= rtol * max |logits| + ATOL
ATOL = 1e-4                  # float32 noise floor, for (untrained) models with tiny logits
DEFAULT_MIN_AGREEMENT = 0.999  # argmax agreement


class ExportCheckError(FcnsegError):
    """The exported model disagrees with PyTorch beyond the tolerances."""


@dataclass
class CheckResult:
    shape: tuple[int, int, int, int]
    max_abs_diff: float
    logit_scale: float
    agreement: float


@dataclass
class ExportResult:
    path: Path
    exporter: str
    opset: int
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runtime: str = "onnxruntime"  # what ran the checks against PyTorch
    via: str = ""                 # after the ONNX export, e.g. ", converted by OpenVINO 2026.4.1"

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.checks)

    @property
    def min_agreement(self) -> float:
        return min(c.agreement for c in self.checks)

    def summary(self) -> str:
        rows = [f"  {c.shape[0]}x3x{c.shape[2]}x{c.shape[3]}: max |diff| {c.max_abs_diff:.2e} "
                f"(logit scale {c.logit_scale:.3g}), argmax agreement {100 * c.agreement:.3f}%"
                for c in self.checks]
        return "\n".join([f"exported {self.path} ({self.exporter} exporter, opset {self.opset}{self.via}); "
                          f"{self.runtime} vs PyTorch:", *rows])


def export_onnx(checkpoint: str | os.PathLike | dict, out: str | os.PathLike, *, opset: int = 17,
                exporter: str = "auto", rtol: float = DEFAULT_RTOL,
                min_agreement: float = DEFAULT_MIN_AGREEMENT,
                check_shapes: tuple[tuple[int, int, int], ...] = CHECK_SHAPES) -> ExportResult:
    """Export an fcnseg checkpoint to ``out`` (atomically) and verify it; returns what was done and checked.

    Raises :class:`ExportCheckError` (and writes nothing) if onnxruntime disagrees with
    PyTorch beyond the tolerances, CheckpointError/ConfigError for bad inputs.
    """
    if isinstance(checkpoint, dict):
        raise ConfigError("export_onnx takes a checkpoint path")
    require_onnx()  # before the (slow) model load
    model = load_model(checkpoint, device="cpu")
    return export_model(model, out, metadata=model_metadata(model), opset=opset, exporter=exporter, rtol=rtol,
                        min_agreement=min_agreement, check_shapes=check_shapes)


def model_metadata(model: torch.nn.Module) -> dict[str, str]:
    """The ``fcnseg.*`` metadata_props of a loaded checkpoint's model (classes, palette, config)."""
    return {
        META_FORMAT: ONNX_FORMAT,
        META_VERSION: __version__,
        META_CLASS_NAMES: json.dumps(list(model.class_names)),
        META_PALETTE: json.dumps([list(c) for c in model.palette]),
        META_MODEL: json.dumps(getattr(model, "fcn_config", {})),
        META_NORMALIZATION: json.dumps({"scale": 1 / 255, "mean": list(IMAGENET_MEAN),
                                        "std": list(IMAGENET_STD)}),
    }


def export_int8(checkpoint: str | os.PathLike, out: str | os.PathLike, calib_data: str | os.PathLike, *,
                calib_images: int = Q.DEFAULT_CALIB_IMAGES, check_images: int = Q.DEFAULT_CHECK_IMAGES,
                split: str = "train", min_agreement: float = Q.DEFAULT_INT8_MIN_AGREEMENT,
                opset: int = 17, seed: int = 0) -> Q.Int8Result:
    """Export ``checkpoint`` as an int8 ONNX model at ``out`` (atomically), calibrated and checked
    (:mod:`fcnseg.quantize`): calibrated on ``calib_images`` images of ``calib_data``'s ``split``,
    then compared with fp32 PyTorch on ``check_images`` others.

    Raises :class:`ExportCheckError` (and writes nothing) when the argmax agreement is below
    ``min_agreement``, or when the fp32 graph itself fails today's export check.
    """
    require_onnx()
    require("onnxruntime.quantization", "int8 export (fcnseg export --int8)")
    calib, check, notes = Q.split_files(Q.calibration_files(calib_data, split), calib_images, check_images, seed)
    model = load_model(checkpoint, device="cpu")
    fp32_bytes, _ = _export_bytes(model, "torchscript", opset, model_metadata(model))
    # The fp32 graph is right (on sizes any backbone takes; the int8 one is then judged on real images).
    judge(verify(model, fp32_bytes, CHECK_SHAPES[:3]), DEFAULT_RTOL, DEFAULT_MIN_AGREEMENT, "torchscript")
    int8_bytes = Q.quantize_onnx(fp32_bytes, calib)
    agreement, rel = Q.compare(model, int8_bytes, check)
    if agreement < min_agreement:
        raise ExportCheckError(Q.refusal(out, agreement, len(check), min_agreement))
    info = {"tool": Q.TOOL, "calibration_images": len(calib), "check_images": len(check),
            "agreement": round(agreement, 6), "max_rel_diff": round(rel, 6)}
    int8_bytes = Q.with_metadata(int8_bytes, {META_PRECISION: "int8", META_INT8: json.dumps(info)})
    with atomic_write(Path(out), "wb") as f:
        f.write(int8_bytes)
    return Q.Int8Result(Path(out), len(calib), len(check), agreement, rel, len(fp32_bytes), len(int8_bytes), notes)


def export_model(model: torch.nn.Module, out: str | os.PathLike, *, metadata: dict[str, str],
                 opset: int = 17, exporter: str = "auto", rtol: float = DEFAULT_RTOL,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT,
                 check_shapes: tuple[tuple[int, int, int], ...] = CHECK_SHAPES) -> ExportResult:
    """Export ``model`` (eval mode, CPU), check it, and write it with ``metadata`` atomically."""
    out = Path(out)
    proto_bytes, result = checked_onnx(model, out, metadata=metadata, opset=opset, exporter=exporter, rtol=rtol,
                                       min_agreement=min_agreement, check_shapes=check_shapes)
    with atomic_write(out, "wb") as f:
        f.write(proto_bytes)
    return result


def checked_onnx(model: torch.nn.Module, out: str | os.PathLike, *, metadata: dict[str, str],
                 opset: int = 17, exporter: str = "auto", rtol: float = DEFAULT_RTOL,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT,
                 check_shapes: tuple[tuple[int, int, int], ...] = CHECK_SHAPES) -> tuple[bytes, ExportResult]:
    """The serialised ONNX graph of ``model``, checked against PyTorch by onnxruntime (falling back
    between exporters as :func:`export_model` describes), and the report; writes nothing.
    ``out`` only names the destination in messages and the report."""
    out = Path(out)
    require_onnx()
    model = model.eval().cpu()
    if exporter == "auto":
        # dynamo emits opset >= 18 natively (older ones only by a down-conversion that fails
        # for ops like Pad with dynamic pads); the TorchScript exporter targets any opset.
        order = ["torchscript", "dynamo"] if opset < 18 else ["dynamo", "torchscript"]
        if not _has_onnxscript():
            order.remove("dynamo")
    elif exporter == "dynamo" and not _has_onnxscript():
        require("onnxscript", "--exporter dynamo (or use --exporter torchscript)")
    elif exporter in ("dynamo", "torchscript"):
        order = [exporter]
    else:
        raise ConfigError(f"unknown exporter {exporter!r}; use auto, dynamo or torchscript")
    notes: list[str] = []
    for i, name in enumerate(order):
        last = i == len(order) - 1
        try:
            proto_bytes, used_opset = _export_bytes(model, name, opset, metadata)
            if used_opset != opset:
                raise _ExportFailed(f"it produced opset {used_opset}, not the requested {opset} "
                                    f"(try --opset {used_opset})")
            checks = verify(model, proto_bytes, check_shapes)
            judge(checks, rtol, min_agreement, name)
        except (ExportCheckError, _ExportFailed) as e:
            if last:
                before = "".join(f"; before that: {n}" for n in notes)
                raise ExportCheckError(f"{out}: {name} export failed: {e}{before}; nothing was "
                                       f"written") from None
            notes.append(f"{name} exporter failed ({e}); trying {order[i + 1]}")
            continue
        return proto_bytes, ExportResult(out, name, used_opset, checks, notes)
    raise AssertionError("unreachable")  # the loop returns or raises


class _ExportFailed(Exception):
    """torch.onnx.export itself failed (message kept for the result's notes)."""


def _export_bytes(model: torch.nn.Module, exporter: str, opset: int,
                  metadata: dict[str, str]) -> tuple[bytes, int]:
    """Serialised ONNX model with dynamic B/H/W and ``metadata`` in metadata_props."""
    onnx = require("onnx", "ONNX export")
    n = getattr(model, "num_classes", None)
    # An example input of a size that is not a multiple of the stride, so that the
    # tracer cannot bake in a convenient size (shapes are dynamic anyway).
    example = torch.randn(1, 3, 67, 93)
    with torch.no_grad():  # (not inference_mode: the refreshed buffers are traced below)
        # One eager forward first: caches keyed on the weights' versions (FCN's per-class
        # upsampling kernels) refresh only outside tracing, so weights changed in place since
        # the last forward would otherwise be exported stale.
        model(example)
    dyn_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    with tempfile.TemporaryDirectory(prefix="fcnseg-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings(), quiet():
                warnings.simplefilter("ignore")  # deprecation chatter from torch.onnx
                if exporter == "dynamo":
                    torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_axes=dyn_axes, external_data=False)
                else:
                    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_axes=dyn_axes, do_constant_folding=True)
        except Exception as e:  # the exporters raise many unrelated types; we report and fall back
            raise _ExportFailed(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ''}") from None
        proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    used_opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opset)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise _ExportFailed(f"onnx checker: {str(e).splitlines()[0][:300]}") from None
    if n is not None:
        out_shape = proto.graph.output[0].type.tensor_type.shape.dim
        if len(out_shape) == 4 and out_shape[1].HasField("dim_value") and out_shape[1].dim_value != n:
            raise _ExportFailed(f"exported graph has {out_shape[1].dim_value} output channels, expected {n}")
    return proto.SerializeToString(), used_opset


def verify(model: torch.nn.Module, proto_bytes: bytes,
           shapes: tuple[tuple[int, int, int], ...] = CHECK_SHAPES, seed: int = 0) -> list[CheckResult]:
    """Run PyTorch and onnxruntime on random inputs of each (B, H, W); compare logits."""
    ort = import_onnxruntime()
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors are raised to us; keep onnxruntime's log quiet
        session = ort.InferenceSession(proto_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's error classes are not importable portably
        raise ExportCheckError(f"onnxruntime cannot load the exported model ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:300]})") from None
    return compare_with_torch(model, lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], "onnxruntime",
                              shapes, seed)


def compare_with_torch(model: torch.nn.Module, run, runtime: str,
                       shapes: tuple[tuple[int, int, int], ...] = CHECK_SHAPES, seed: int = 0) -> list[CheckResult]:
    """Run PyTorch and ``run`` (float32 (B, 3, H, W) -> (B, C, H, W) numpy logits; ``runtime`` names it
    in messages) on seeded random inputs of each (B, H, W); compare logits."""
    gen = torch.Generator().manual_seed(seed)
    results = []
    for b, h, w in shapes:
        x = torch.randn(b, 3, h, w, generator=gen)
        with torch.inference_mode():
            ref = model(x).float().numpy()  # (B, C, H, W)
        try:
            got = run(x.numpy())
        except Exception as e:  # a shape the graph cannot take: dynamic axes did not work
            raise ExportCheckError(f"{runtime} failed on input {b}x3x{h}x{w} ({type(e).__name__}: "
                                   f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''})") from None
        if got.shape != ref.shape:
            raise ExportCheckError(f"input {b}x3x{h}x{w}: {runtime} output {got.shape} != PyTorch {ref.shape}")
        diff = float(np.abs(got - ref).max())
        agree = float((got.argmax(1) == ref.argmax(1)).mean())
        results.append(CheckResult((b, 3, h, w), diff, float(np.abs(ref).max()), agree))
    return results


def judge(checks: list[CheckResult], rtol: float, min_agreement: float, exporter: str) -> None:
    """ExportCheckError unless every check is within the tolerances (``exporter`` names the culprit)."""
    for c in checks:
        tol = rtol * c.logit_scale + ATOL
        if not np.isfinite(c.max_abs_diff) or c.max_abs_diff > tol or c.agreement < min_agreement:
            raise ExportCheckError(
                f"{exporter} export disagrees with PyTorch on input {'x'.join(map(str, c.shape))}: "
                f"max |diff| {c.max_abs_diff:.3g} (allowed {tol:.3g}), argmax agreement "
                f"{100 * c.agreement:.3f}% (need {100 * min_agreement:.2f}%)")


def require_onnx() -> None:
    """onnx writes the file, onnxruntime checks it against PyTorch: both are needed."""
    require("onnx", "ONNX export")
    require("onnxruntime", "ONNX export (checking the exported model)")


def _has_onnxscript() -> bool:
    return available("onnxscript")


@contextlib.contextmanager
def quiet():
    """Silence the exporters' progress prints (stdout) and log warnings (opset upgrades,
    missing torchvision ops) for the duration of one export; failures still raise."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


__all__ = ["export_onnx", "export_model", "export_int8", "checked_onnx", "compare_with_torch", "judge",
           "model_metadata", "verify", "require_onnx", "ExportResult", "CheckResult", "ExportCheckError"]
