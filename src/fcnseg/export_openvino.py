"""``fcnseg export --format openvino``: checkpoint -> OpenVINO IR (``model.xml`` + ``model.bin``), verified.

The route is the ONNX export's (:mod:`fcnseg.export`): the ONNX graph (dynamic B/H/W) is
exported and checked against PyTorch by onnxruntime, then converted by OpenVINO, the fcnseg
metadata stored in the IR's rt_info (:mod:`fcnseg.infer.openvino_runner`), and the IR saved
into a temporary folder beside ``--out``. There it is checked again:

- fp32: the saved IR, loaded as ``predict`` loads it (:class:`OpenVinoModel`, precision hint
  f32), is compared with PyTorch on :data:`fcnseg.export.CHECK_SHAPES` with the ONNX check's
  tolerances;
- int8 (``--int8``): NNCF's post-training quantisation with accuracy control
  (``nncf.quantize_with_accuracy_control``, PERFORMANCE preset: symmetric int8 activations and
  weights; the head kept fp32, as in the ONNX int8 export), calibrated on the same images the
  ONNX int8 export uses (:func:`fcnseg.quantize.split_files`). The accuracy control measures the
  argmax agreement with fp32 PyTorch on :data:`AC_IMAGES` further training images (neither
  calibration nor check) and reverts the layers that cost most to fp32, one at a time, until it
  reaches ``min_agreement``. Chosen by ``benchmarks/int8_select.py`` on held-out train images:
  on the Lite0 CamVid model it reverted one layer (the stem conv) and raised the agreement from
  98.69% to 99.31%. The quantised model is then compared with fp32 PyTorch on the held-out check
  images and refused below ``min_agreement``, as in :func:`fcnseg.export.export_int8`.

Only then do the two files move into place (:func:`install_pair`); a failed export writes
nothing and leaves an existing model untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from fcnseg import quantize as Q
from fcnseg.api import load_model
from fcnseg.data.image_files import read_image
from fcnseg.errors import ConfigError
from fcnseg.export import (CHECK_SHAPES, DEFAULT_MIN_AGREEMENT, DEFAULT_RTOL, ExportCheckError, ExportResult,
                           checked_onnx, compare_with_torch, judge, model_metadata, quiet, require_onnx)
from fcnseg.infer.arrays import normalize
from fcnseg.infer.onnx_runner import META_FORMAT, META_INT8, META_PRECISION
from fcnseg.infer.openvino_runner import OPENVINO_FORMAT, OpenVinoModel, set_metadata
from fcnseg.optional import require

SUFFIX = ".xml"  # the graph; its weights are the .bin of the same stem
AC_IMAGES = 32  # validation images of NNCF's accuracy control (train images, none calibrated or checked on)


def check_out(out: str | os.PathLike) -> Path:
    """``out`` as a Path, or a ConfigError if it is not a .xml name."""
    out = Path(out)
    if out.suffix.lower() != SUFFIX:
        raise ConfigError(f"--out {out}: use a .xml file name for --format openvino (the weights go to "
                          f"{out.stem}.bin beside it)")
    return out


def export_openvino(checkpoint: str | os.PathLike, out: str | os.PathLike, *, opset: int = 17,
                    exporter: str = "auto", rtol: float = DEFAULT_RTOL, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                    check_shapes: tuple[tuple[int, int, int], ...] = CHECK_SHAPES) -> ExportResult:
    """Export an fcnseg checkpoint to the OpenVINO IR ``out`` (.xml, + .bin beside it) and verify it.

    Raises :class:`ExportCheckError` (and writes nothing) if the ONNX graph or the IR disagrees
    with PyTorch beyond the tolerances; CheckpointError/ConfigError for bad inputs.
    """
    out = check_out(out)
    ov = _require_openvino("OpenVINO export")  # before the (slow) model load
    model = load_model(checkpoint, device="cpu")
    # No ONNX metadata: OpenVINO would copy it into the IR's rt_info "framework" section, a
    # stale duplicate of ours (whose format is fcnseg-openvino).
    onnx_bytes, report = checked_onnx(model, out, metadata={}, opset=opset, exporter=exporter, rtol=rtol,
                                      min_agreement=min_agreement, check_shapes=check_shapes)
    with _staging(out) as staged:
        ir = _convert(ov, onnx_bytes, staged.parent)
        set_metadata(ir, ov_metadata(model))
        ov.save_model(ir, str(staged), compress_to_fp16=False)  # fp32 weights, as exported
        runner = _load_staged(staged, out)
        try:
            checks = compare_with_torch(model, runner, "OpenVINO", check_shapes)
            judge(checks, rtol, min_agreement, "OpenVINO")
        except ExportCheckError as e:
            raise ExportCheckError(f"{out}: {e}; nothing was written") from None
        del runner  # the compiled model maps the staged .bin
        install_pair(staged, out)
    version = ov.__version__.split("-")[0]  # "2026.4.1" of "2026.4.1-22982-e213a147257-releases/2026/4"
    return ExportResult(out, report.exporter, report.opset, checks, report.notes, runtime=f"OpenVINO {version}",
                        via=f", converted by OpenVINO {version}")


def export_openvino_int8(checkpoint: str | os.PathLike, out: str | os.PathLike, calib_data: str | os.PathLike, *,
                         calib_images: int = Q.DEFAULT_CALIB_IMAGES, check_images: int = Q.DEFAULT_CHECK_IMAGES,
                         split: str = "train", min_agreement: float = Q.DEFAULT_INT8_MIN_AGREEMENT,
                         opset: int = 17, seed: int = 0, ac_images: int = AC_IMAGES,
                         target_agreement: float | None = None) -> Q.Int8Result:
    """Export ``checkpoint`` as an int8 OpenVINO IR at ``out`` (NNCF), calibrated on ``calib_images``
    images of ``calib_data``'s ``split`` and compared with fp32 PyTorch on ``check_images`` others
    (the images :func:`fcnseg.export.export_int8` uses).

    The accuracy control aims at ``target_agreement`` (default ``min_agreement``; 0 turns it
    off) on ``ac_images`` further images. Raises :class:`ExportCheckError` (and writes nothing)
    when the argmax agreement is below ``min_agreement``, or when the fp32 graph itself fails the
    export check.
    """
    out = check_out(out)
    target = min_agreement if target_agreement is None else target_agreement
    ov = _require_openvino("int8 OpenVINO export (fcnseg export --format openvino --int8)")
    nncf = require("nncf", "int8 OpenVINO export (fcnseg export --format openvino --int8)")
    calib, rest, notes = Q.split_files(Q.calibration_files(calib_data, split), calib_images,
                                       check_images + ac_images, seed)
    check, ac = rest[:check_images], rest[check_images:]  # check: the images export_int8 checks on
    model = load_model(checkpoint, device="cpu")
    # The fp32 graph is right (on sizes any backbone takes, as for the ONNX int8 export); the
    # int8 one is then judged on real images.
    onnx_bytes, _ = checked_onnx(model, out, metadata={}, opset=opset, check_shapes=CHECK_SHAPES[:3])
    onnx = require("onnx", "int8 OpenVINO export")
    head = Q.fp32_nodes(onnx.load_from_string(onnx_bytes).graph, Q.DEFAULT_KEEP_FP32)
    controlled = bool(ac) and 0.0 < target <= 1.0
    tool = (f"NNCF {nncf.__version__} " + (f"quantize_with_accuracy_control (agreement >= {target:g} on "
            f"{len(ac)} other train images)" if controlled else "quantize") + " (PERFORMANCE preset; the head kept fp32)")
    if not ac and target > 0:
        notes.append("no images left for the accuracy control: plain NNCF quantisation")
    with _staging(out) as staged:
        fp32 = _convert(ov, onnx_bytes, staged.parent)
        inputs = [normalize(read_image(f)) for f in calib]  # (1, 3, H, W) float32 each, at its own size
        # OpenVINO keeps the ONNX node names as the operations' names.
        kwargs = dict(subset_size=len(inputs), preset=nncf.QuantizationPreset.PERFORMANCE,
                      ignored_scope=nncf.IgnoredScope(names=head, validate=False))
        with warnings.catch_warnings(), quiet():  # NNCF's progress bars and info logs
            warnings.simplefilter("ignore")
            if controlled:
                int8 = nncf.quantize_with_accuracy_control(
                    fp32, nncf.Dataset(inputs), nncf.Dataset(_references(model, ac)), _agreement,
                    max_drop=1.0 - target, **kwargs)
            else:
                int8 = nncf.quantize(fp32, nncf.Dataset(inputs), **kwargs)
        # Measured on the model as compiled for inference (f32 hint: the int8 is the graph's own).
        compiled = ov.Core().compile_model(int8, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        agreement, rel = Q.compare_run(model, lambda x: compiled(x)[0], check)
        del compiled
        if agreement < min_agreement:
            raise ExportCheckError(Q.refusal(out, agreement, len(check), min_agreement, openvino=True))
        info = {"tool": tool, "calibration_images": len(calib), "check_images": len(check),
                "agreement": round(agreement, 6), "max_rel_diff": round(rel, 6)}
        set_metadata(int8, {**ov_metadata(model), META_PRECISION: "int8", META_INT8: json.dumps(info)})
        ov.save_model(int8, str(staged), compress_to_fp16=False)
        if _load_staged(staged, out).precision != "int8":  # the metadata reads back as predict reads it
            raise ExportCheckError(f"{out}: the saved model does not read back as int8; nothing was written")
        size = staged.stat().st_size + staged.with_suffix(".bin").stat().st_size
        install_pair(staged, out)
    return Q.Int8Result(out, len(calib), len(check), agreement, rel, len(onnx_bytes), size, notes, tool=tool)


def _references(model: torch.nn.Module, files) -> list[tuple]:
    """(normalised image (1, 3, H, W), fp32 PyTorch argmax (1, H, W)) per file: the accuracy
    control's validation items."""
    items = []
    for f in files:
        x = normalize(read_image(f))
        with torch.inference_mode():
            items.append((x, model(torch.from_numpy(x)).argmax(1).numpy()))
    return items


def _agreement(compiled, items) -> tuple[float, list[float]]:
    """NNCF's validation function: the pixel agreement of ``compiled`` with the fp32 argmax over
    ``items`` (and per image, which NNCF uses to rank the layers)."""
    hits, pixels, per_image = 0, 0, []
    for x, ref in items:
        same = compiled(x)[0].argmax(1) == ref
        hits, pixels = hits + int(same.sum()), pixels + same.size
        per_image.append(float(same.mean()))
    return hits / pixels, per_image


def ov_metadata(model: torch.nn.Module) -> dict[str, str]:
    """The fcnseg metadata of an IR: the ONNX export's, format ``fcnseg-openvino``."""
    return {**model_metadata(model), META_FORMAT: OPENVINO_FORMAT}


def install_pair(staged: Path, out: Path) -> None:
    """Move the staged IR (``staged`` .xml and its .bin, in a folder beside ``out``) to ``out``.

    No two renames are atomic together, so the order keeps every intermediate state harmless for
    a reader, who opens the .xml: an existing pair is first moved aside, its .xml first (the old
    model stops being loadable before its .bin goes), then the new .bin and last the new .xml. A
    failure puts the old pair back; a process killed half-way leaves no .xml (or the old one
    inside the hidden staging folder), never a .xml with the wrong .bin.
    """
    pairs = [(staged.with_suffix(".bin"), out.with_suffix(".bin")), (staged, out)]  # .bin first
    for src, _ in pairs:
        _fsync(src)
    aside = staged.parent / "replaced"
    aside.mkdir()
    moved: list[Path] = []
    installed: list[tuple[Path, Path]] = []
    try:
        for _, dst in reversed(pairs):  # old .xml, then old .bin
            if dst.exists():
                os.replace(dst, aside / dst.name)
                moved.append(dst)
        for src, dst in pairs:
            os.replace(src, dst)
            installed.append((src, dst))
    except BaseException:
        for src, dst in installed:  # back into the staging folder
            with contextlib.suppress(OSError):
                os.replace(dst, src)
        for dst in reversed(moved):  # old .bin back, then its .xml
            with contextlib.suppress(OSError):
                os.replace(aside / dst.name, dst)
        raise
    _fsync_dir(out.parent)


def _require_openvino(purpose: str):
    require_onnx()  # the route goes through ONNX (exported, and checked by onnxruntime)
    return require("openvino", purpose)


@contextlib.contextmanager
def _staging(out: Path):
    """A hidden temporary folder beside ``out`` (same file system: the final renames are atomic),
    removed with whatever is left in it; yields the staged .xml path (same name as ``out``, so the
    IR's .bin name matches)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.stem}.", suffix=".tmp", dir=out.parent) as tmp:
        yield Path(tmp) / out.name


def _convert(ov, onnx_bytes: bytes, folder: Path):
    """The ``openvino.Model`` of a serialised ONNX graph (written to ``folder`` for OpenVINO's reader)."""
    src = folder / "fp32.onnx"
    src.write_bytes(onnx_bytes)
    try:
        return ov.Core().read_model(str(src))
    except Exception as e:  # OpenVINO raises RuntimeError subclasses with multi-line messages
        raise ExportCheckError(f"OpenVINO cannot read the exported ONNX graph ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0][:300]}); nothing was written") from None


def _load_staged(staged: Path, out: Path) -> OpenVinoModel:
    try:
        return OpenVinoModel(staged)
    except Exception as e:  # CheckpointError, or OpenVINO's own
        raise ExportCheckError(f"{out}: the saved OpenVINO model does not load ({e}); nothing was written") from None


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # make the renames durable (not possible everywhere)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["export_openvino", "export_openvino_int8", "install_pair", "ov_metadata", "check_out"]
