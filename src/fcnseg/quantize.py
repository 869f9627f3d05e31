"""int8 models: post-training static quantisation of an exported fcnseg model (``fcnseg export --int8``,
orchestrated by :func:`fcnseg.export.export_int8`).

The tool is ONNX Runtime's ``quantize_static`` (QDQ format: QuantizeLinear/DequantizeLinear
pairs around each conv, which onnxruntime fuses into int8 kernels; u8 activations, s8
per-channel weights, the layout its VNNI kernels take). Activation ranges are calibrated on
``N`` images of the training split (default :data:`DEFAULT_CALIB_IMAGES`), each at its own size,
as inference sees them: clipped at the 99.999th percentile, and the head (score convs, fusion
sums, upsampling: ~0.1% of the work) stays fp32. Both settings were chosen by
``benchmarks/int8_select.py`` on held-out TRAIN images (never val): the most agreeing with fp32
of seven candidates on two CamVid models (99.34% for fcn8s_small, 98.60% for the Lite0
transfer model, against 98.80% / 98.48% for min/max ranges with only the upsampling fp32).

The quantised model is then checked against the fp32 PyTorch model on *other* images of the
same data (held out from calibration): argmax agreement over all their pixels must reach
``min_agreement`` (default :data:`DEFAULT_INT8_MIN_AGREEMENT`, 99%: the project's accuracy
target for every non-fp32 path; a broken quantisation lands far below, e.g. ~60% for one
calibrated on blank images), or nothing is written. The file records ``fcnseg.precision =
int8`` and what was calibrated and measured (``fcnseg.int8``), so runners know what they run.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fcnseg.data.datasets import open_dataset
from fcnseg.data.image_files import read_image
from fcnseg.errors import ConfigError, DataError
from fcnseg.infer.arrays import normalize
from fcnseg.infer.onnx_runner import INPUT_NAME, OUTPUT_NAME, import_onnxruntime
from fcnseg.optional import require
from fcnseg.predict import collect_inputs

DEFAULT_CALIB_IMAGES = 32
DEFAULT_CHECK_IMAGES = 8
DEFAULT_INT8_MIN_AGREEMENT = 0.99
DEFAULT_CALIBRATE = "percentile"
DEFAULT_KEEP_FP32 = ("head",)
TOOL = ("onnxruntime.quantization.quantize_static (QDQ, u8 activations, s8 per-channel weights, "
        "99.999th-percentile ranges; the head kept fp32)")


@dataclass
class Int8Result:
    """What ``export_int8`` wrote and measured."""

    path: Path
    calibration_images: int
    check_images: int
    agreement: float           # argmax agreement with fp32 PyTorch over the check images' pixels
    max_rel_diff: float        # max |int8 - fp32| / max |fp32| over the check images
    fp32_bytes: int
    int8_bytes: int
    notes: list[str]
    tool: str = TOOL           # what quantised it (fcnseg.int8's "tool")

    def summary(self) -> str:
        return (f"exported {self.path} (int8, {self.tool}); calibrated on {self.calibration_images} images; "
                f"on {self.check_images} held-out images vs fp32 PyTorch: argmax agreement "
                f"{100 * self.agreement:.2f}%, max |diff| {100 * self.max_rel_diff:.1f}% of the logit scale; "
                f"size {self.int8_bytes / 1e6:.1f} MB (fp32 {self.fp32_bytes / 1e6:.1f} MB)")


def calibration_files(data: str | Path, split: str = "train") -> list[Path]:
    """The image files to calibrate on: ``split`` of a dataset root (VOC layout or images/ + masks/),
    else the images directly in the folder ``data``."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--calib-data {data}: no such folder; give a dataset root or a folder of images")
    try:
        ds = open_dataset(root, split, mask_255="ignore")  # only the images are read
        files = [Path(ds.image_path(i)) for i in range(len(ds))]
    except DataError:
        files, _ = collect_inputs([str(root)])
    if not files:
        raise DataError(f"--calib-data {data}: no images found (split {split!r} or image files in the folder)")
    return files


def split_files(files: Sequence[Path], n_calib: int, n_check: int, seed: int = 0) -> tuple[list[Path], list[Path], list[str]]:
    """A seeded draw of ``n_calib`` calibration files and up to ``n_check`` others to check on."""
    if n_calib < 1 or n_check < 1:
        raise ConfigError("--calib-images and the check images must be >= 1")
    order = np.random.default_rng(seed).permutation(len(files))
    chosen = [files[i] for i in order]
    calib, check = chosen[:n_calib], chosen[n_calib:n_calib + n_check]
    notes = []
    if len(calib) < n_calib:
        notes.append(f"only {len(calib)} calibration images available (asked for {n_calib})")
    if not check:  # too few images to hold any out: check on calibration images, and say so
        check = calib[:n_check]
        notes.append("no images left to hold out: the check used calibration images")
    return calib, check, notes


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: one normalised image per ``get_next``
    (image files are read and normalised; arrays are taken as normalised (1, 3, H, W) inputs)."""

    def __init__(self, items: Sequence[Path | np.ndarray]):
        self.items = list(items)
        self.i = 0

    def get_next(self) -> dict | None:
        if self.i >= len(self.items):
            return None
        item = self.items[self.i]
        x = item if isinstance(item, np.ndarray) else normalize(read_image(item))  # (1, 3, H, W) float32
        self.i += 1
        return {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self) -> None:
        self.i = 0


# Parts of the graph that may stay fp32 (``keep_fp32``), by what they are rather than by name:
#   "upsampling": the ConvTransposes (bilinear kernels on a few class channels: cheap)
#   "head": the score convs and everything after them (fusion sums, crops, upsampling): the
#           layers that compute the logits themselves, a few class channels, ~0.1% of the work
#   "depthwise": grouped convs (EfficientNet's, MobileNet's), whose per-channel ranges vary most
#   "stem": the first conv, reading the image (3 input channels: a tiny share of the work)
KEEP_FP32_CHOICES = ("upsampling", "head", "depthwise", "stem")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def fp32_nodes(graph, keep: Sequence[str]) -> list[str]:
    """Names of the nodes of an ONNX ``graph`` that the parts ``keep`` (KEEP_FP32_CHOICES) cover."""
    unknown = set(keep) - set(KEEP_FP32_CHOICES)
    if unknown:
        raise ConfigError(f"keep_fp32: unknown part(s) {sorted(unknown)}; choose from {', '.join(KEEP_FP32_CHOICES)}")
    inits = {t.name: t for t in graph.initializer}
    names: list[str] = []

    def group(n) -> int:
        return next((a.i for a in n.attribute if a.name == "group"), 1)

    if "upsampling" in keep:
        names += [n.name for n in graph.node if n.op_type == "ConvTranspose"]
    if "depthwise" in keep:
        names += [n.name for n in graph.node if n.op_type == "Conv" and group(n) > 1]
    if "stem" in keep:  # the first conv in topological order: the one that reads the image
        names += [n.name for n in graph.node if n.op_type == "Conv"][:1]
    if "head" in keep:
        # The score convs: 1x1 convs producing as many channels as the model's output has
        # classes; then every node downstream of them (nodes are in topological order).
        out_shape = graph.output[0].type.tensor_type.shape.dim
        n_classes = out_shape[1].dim_value if len(out_shape) > 1 else 0
        tainted: set[str] = set()
        for n in graph.node:
            w = inits.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
            is_score = (w is not None and len(w.dims) == 4 and tuple(w.dims[2:]) == (1, 1)
                        and n_classes > 0 and w.dims[0] == n_classes)
            if is_score or any(i in tainted for i in n.input):
                names.append(n.name)
                tainted.update(n.output)
    return list(dict.fromkeys(names))


def quantize_onnx(fp32_bytes: bytes, calib: Sequence[Path | np.ndarray], *, calibrate: str = DEFAULT_CALIBRATE,
                  keep_fp32: Sequence[str] = DEFAULT_KEEP_FP32, percentile: float = 99.999) -> bytes:
    """The QDQ int8 model of an fp32 fcnseg ONNX graph, calibrated on ``calib`` (image files, or
    normalised (1, 3, H, W) float32 arrays). ``keep_fp32``: parts left unquantised
    (:data:`KEEP_FP32_CHOICES`); ``calibrate``: how activation ranges are set
    (:data:`CALIBRATION_METHODS`; ``percentile`` clips each activation's range at its
    ``100 - percentile`` and ``percentile`` percentiles, over the calibration images)."""
    q = require("onnxruntime.quantization", "int8 export (fcnseg export --int8)")
    onnx = require("onnx", "int8 export")
    if calibrate not in CALIBRATION_METHODS:
        raise ConfigError(f"calibrate={calibrate!r}: choose from {', '.join(CALIBRATION_METHODS)}")
    method = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
              "entropy": q.CalibrationMethod.Entropy}[calibrate]
    extra = {"CalibPercentile": percentile} if calibrate == "percentile" else {}
    with tempfile.TemporaryDirectory(prefix="fcnseg-int8-") as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32_bytes)
        try:  # shape inference + graph optimisation: what onnxruntime recommends before quantising
            q.shape_inference.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # optional step; quantising the plain graph is still correct
            pre = src
        excluded = fp32_nodes(onnx.load(str(pre)).graph, keep_fp32)
        q.quantize_static(str(pre), str(dst), _Reader(calib), quant_format=q.QuantFormat.QDQ,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          per_channel=True, calibrate_method=method, nodes_to_exclude=excluded,
                          extra_options=extra)
        model = onnx.load(str(dst))
    # quantize_static keeps the graph, not the file's metadata: copy it over.
    src_meta = {p.key: p.value for p in onnx.load_from_string(fp32_bytes).metadata_props}
    del model.metadata_props[:]
    for k, v in src_meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model.SerializeToString()


def compare(model: torch.nn.Module, int8_bytes: bytes, files: Sequence[Path]) -> tuple[float, float]:
    """(argmax agreement, max |diff| / max |fp32|) of the int8 graph vs fp32 PyTorch on ``files``."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(int8_bytes, opts, providers=["CPUExecutionProvider"])
    return compare_run(model, lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], files)


def compare_run(model: torch.nn.Module, run, files: Sequence[Path]) -> tuple[float, float]:
    """(argmax agreement, max |diff| / max |fp32|) of ``run`` (float32 (1, 3, H, W) -> (1, C, H, W)
    numpy logits, e.g. an int8 runner) vs fp32 PyTorch on the images ``files``."""
    agree = pixels = 0
    rel = 0.0
    for f in files:
        x = normalize(read_image(f))  # (1, 3, H, W)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).float().numpy()  # (1, C, H, W)
        got = run(x)
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        pixels += ref[:, 0].size
        rel = max(rel, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)))
    return agree / pixels, rel


def refusal(out: Path | str, agreement: float, n_check: int, min_agreement: float, *, openvino: bool = False) -> str:
    """The message of an int8 export refused for its agreement with fp32 (nothing is written)."""
    hint = ("" if openvino else ", or export with --format openvino --int8 (NNCF's accuracy control "
            "keeps the layers that cost most in fp32)")
    return (f"{out}: the int8 model agrees with fp32 on {100 * agreement:.2f}% of the pixels "
            f"of {n_check} held-out images (need {100 * min_agreement:.2f}%); nothing was "
            f"written. Calibrate on more or more typical images (--calib-images, --calib-data){hint}, "
            f"or keep the fp32 model")


def with_metadata(proto_bytes: bytes, extra: dict[str, str]) -> bytes:
    onnx = require("onnx", "int8 export")
    model = onnx.load_from_string(proto_bytes)
    for k, v in extra.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model.SerializeToString()


__all__ = ["quantize_onnx", "fp32_nodes", "KEEP_FP32_CHOICES", "CALIBRATION_METHODS", "DEFAULT_CALIBRATE",
           "DEFAULT_KEEP_FP32", "compare", "compare_run", "refusal", "calibration_files", "split_files", "with_metadata",
           "Int8Result", "DEFAULT_CALIB_IMAGES", "DEFAULT_CHECK_IMAGES", "DEFAULT_INT8_MIN_AGREEMENT", "TOOL"]
