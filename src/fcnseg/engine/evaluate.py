"""Evaluation: ``fcnseg eval`` and :func:`evaluate`.

Every score comes from ONE confusion matrix accumulated over the whole split (not
averaged per batch): pixel accuracy, mean class accuracy, per-class IoU, mIoU and
frequency-weighted IoU (Long et al., Sec. 5). Images are evaluated at full size, batched
with ``pad_collate`` (padding is labelled 255 and so ignored). Under ``torchrun`` each
rank evaluates a disjoint slice of the split (:class:`~fcnseg.engine.distributed.ShardSampler`)
and the matrix is all-reduced once, so the result equals a single-process run.

Optionally also the boundary F1 score (BF, Csurka et al. 2013), slower.
:func:`evaluate_crf_effect` scores a dataset with and without dense-CRF refinement.

Usage::

    fcnseg eval --checkpoint runs/x/best.pt --data data/VOC2012 --split val [--bf] [--json] [--out DIR]

``--out DIR`` writes ``eval.json`` and ``confusion_matrix.png`` (row-normalised) there.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.constants import IGNORE_INDEX, PRECISIONS
from fcnseg.data.datasets import open_dataset
from fcnseg.data.image_files import read_image, read_mask
from fcnseg.data.mask_255 import MODES as MASK_255_MODES
from fcnseg.data.transforms import eval_transforms, pad_collate
from fcnseg.engine import distributed as D
from fcnseg.engine.loader_errors import unwrapped_batches
from fcnseg.engine.runtime import AMP_MODES, autocast, resolve_amp, resolve_device
from fcnseg.engine.sampling import worker_init
from fcnseg.engine.workers import default_workers, resolve_workers
from fcnseg.errors import ConfigError, DataError
from fcnseg.infer.crf import dense_crf, require_pydensecrf
from fcnseg.infer.onnx_runner import OnnxModel
from fcnseg.infer.openvino_runner import OpenVinoModel
from fcnseg.infer.runner import check_runner_precision
from fcnseg.infer.segment import segment_array
from fcnseg.infer.torch_runner import prepared_model
from fcnseg.jsonl import json_safe
from fcnseg.metrics import BoundaryF1, ConfusionMatrix, format_table
from fcnseg.outputs import atomic_write_text, prepare_output_dir
from fcnseg.plots import plot_confusion_matrix
from fcnseg.precision import resolve_precision


def make_eval_loader(ds: Dataset, *, batch_size: int, workers: int, device: torch.device,
                     persistent: bool = False) -> DataLoader:
    """Sharded (under DDP), ordered, unpadded loader of full-size images with ``pad_collate``.

    ``persistent``: the validation loader of a training run, whose workers, like the training
    loader's, ignore SIGINT/SIGTERM (a signal to the process group mid-validation must reach
    only the trainer, which saves a resumable checkpoint; see ``sampling.worker_init``).
    """
    return DataLoader(ds, batch_size=batch_size, sampler=D.ShardSampler(len(ds)), num_workers=workers,
                      collate_fn=pad_collate, pin_memory=device.type == "cuda",
                      persistent_workers=persistent and workers > 0,
                      worker_init_fn=worker_init if persistent else None,
                      # Own generator: creating the iterator must not draw from the global RNG
                      # (that would shift dropout streams and break exact resume).
                      generator=torch.Generator())


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device | str, *,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False, bf: bool = False,
             progress: bool = False) -> dict:
    """Evaluate ``model`` on every image of ``loader``; return the scores as a dict.

    Keys: ``pixel_acc``, ``mean_acc``, ``miou``, ``fwiou`` (floats in [0, 1]), ``iou`` and
    ``acc`` (per-class lists; NaN where undefined, see :meth:`ConfusionMatrix.compute`),
    ``confusion_matrix`` (rows = ground truth, columns = prediction, pixel counts),
    ``num_images``, ``seconds``, and ``bf`` / ``bf_per_class`` when ``bf=True``. Under DDP the matrix (and BF
    accumulator) are all-reduced once; every rank gets the same result.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    bf_acc = BoundaryF1(num_classes) if bf else None
    n_images = 0
    t0 = time.perf_counter()
    # unwrapped_batches: a worker's DataError (e.g. a corrupt JPEG) reaches the user as one line.
    for x, y in tqdm(unwrapped_batches(loader), total=len(loader), desc="eval", leave=False,
                     disable=not (progress and D.is_main_process()) or None, dynamic_ncols=True):
        x = x.to(device, non_blocking=True)  # (B, 3, H, W)
        y = y.to(device, non_blocking=True)  # (B, H, W), 255 = ignore (incl. pad_collate padding)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(x)  # (B, C, H, W)
        pred = logits.max(1).indices  # (B, H, W); max().indices is ~5x faster than argmax on CPU
        cm.update(pred, y)
        if bf_acc is not None:
            bf_acc.update(pred.cpu(), y.cpu())
        n_images += x.shape[0]
    # The one all-reduce of the evaluation (no-op without DDP).
    cm.reduce_()
    counts = torch.tensor([n_images], dtype=torch.int64, device=device)
    D.all_reduce_(counts)
    result = dict(cm.compute())
    result["confusion_matrix"] = result.pop("matrix")
    result["num_images"] = int(counts.item())
    if bf_acc is not None:
        bf_acc.reduce_()
        result.update(bf_acc.compute())  # bf, bf_per_class
    result["seconds"] = time.perf_counter() - t0
    model.train(was_training)
    return _plain(result)


def _plain(x):
    # Tensors / NumPy scalars -> JSON-friendly Python values.
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    return x


def scores_table(result: dict, class_names: Sequence[str]) -> str:
    """Per-class IoU / accuracy table followed by the summary scores."""
    return format_table(result, class_names)


def to_json(result: dict) -> str:
    """Strict JSON (NaN -> null) of an :func:`evaluate` result."""
    return json.dumps(json_safe(result), indent=1)


def evaluate_crf_effect(model, dataset, *, max_images: int | None = None,
                        tile: int | str | None = None, crf_kwargs: dict | None = None,
                        progress: bool = True) -> dict:
    """Scores of ``model`` on ``dataset`` without and with CRF refinement.

    ``dataset`` is a :func:`fcnseg.data.datasets.open_dataset` dataset (its images and
    masks are read from ``image_path(i)``/``mask_path(i)`` at full size, not through its
    transforms). Returns ``{"without": scores, "with": scores, "images": n}``, scores as
    from :meth:`fcnseg.metrics.ConfusionMatrix.compute` plus the boundary F1 score
    (``bf``, ``bf_per_class``) -- the CRF's claim is sharper boundaries, so BF is measured.
    """
    require_pydensecrf()
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    C = dataset.num_classes
    plain, refined = ConfusionMatrix(C), ConfusionMatrix(C)
    plain_bf, refined_bf = BoundaryF1(C), BoundaryF1(C)
    for i in tqdm(range(n), desc="crf eval", disable=not progress):
        image = read_image(dataset.image_path(i))
        mask = read_mask(dataset.mask_path(i), C)
        labels, probs = segment_array(model, image, tile=tile, return_probs=True)
        crf_labels = dense_crf(image, probs, **(crf_kwargs or {}))
        plain.update(_as_metric_input(labels), _as_metric_input(mask))
        refined.update(_as_metric_input(crf_labels), _as_metric_input(mask))
        plain_bf.update(_as_metric_input(labels), _as_metric_input(mask))
        refined_bf.update(_as_metric_input(crf_labels), _as_metric_input(mask))
    return {"without": {**plain.compute(), **plain_bf.compute()},
            "with": {**refined.compute(), **refined_bf.compute()}, "images": n}


def _as_metric_input(a: np.ndarray) -> torch.Tensor:
    """Labels as the int64 torch tensor ConfusionMatrix.update expects."""
    return torch.from_numpy(a.astype(np.int64))


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="fcnseg checkpoint (best.pt / last.pt)")
    p.add_argument("--data", required=True, help="dataset root (VOC layout or images/ + masks/)")
    p.add_argument("--split", default="val",
                   help="split to evaluate (default: val), or a split file (.txt, one id per line), e.g. the "
                        "val.txt that train --val-fraction wrote to its run directory")
    p.add_argument("--mask-255", choices=MASK_255_MODES,
                   help="what mask value 255 means: ignore or class (the last class); default: as in training "
                        "(the checkpoint's config)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    p.add_argument("--bf", action="store_true", help="also compute the boundary F1 (BF) score (slower)")
    p.add_argument("--out", default=None, help="write eval.json and confusion_matrix.png into this directory")
    p.add_argument("--overwrite", action="store_true", help="allow --out to be a non-empty directory")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per batch (full-size images, padded to the batch's largest; default 1)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"data-loading processes (default: the usable CPUs minus one for the main "
                        f"process, at most 8; here {default_workers()})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto (default: the GPU if PyTorch sees one, else the CPU), cpu or cuda")
    p.add_argument("--amp", default="auto", choices=AMP_MODES,
                   help="mixed precision: auto (bf16/fp16 on GPU, bf16 on CPUs with AMX), off, bf16, fp16")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster on recent GPUs)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default: exact scores), bf16 (CPU fast path in bf16), auto (what predict's "
                        "auto picks here), or int8 (a .onnx or .xml model from `fcnseg export --int8`)")


class OnnxAsModule(torch.nn.Module):
    """An exported model (fp32 or int8 ONNX run by onnxruntime, or OpenVINO IR) behind evaluate()'s module interface."""

    def __init__(self, runner: OnnxModel | OpenVinoModel):
        super().__init__()
        self.runner = runner
        self.num_classes = runner.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, H, W) logits
        return torch.from_numpy(self.runner(x.float().cpu().numpy()))


def eval_model(checkpoint: str, ckpt: dict | None, num_classes: int, dev: torch.device, precision: str):
    """The module ``fcnseg eval`` runs for ``--precision``, and auto's Choice (or None).

    fp32: the checkpoint's model, eager (exact). bf16/auto on CPU: its prepared fast path in the
    chosen precision. A .onnx file: onnxruntime, a .xml one: OpenVINO (its own precision: int8 for
    ``export --int8``).
    """
    if ckpt is None:  # an exported model
        runner = OpenVinoModel(checkpoint) if Path(checkpoint).suffix.lower() == ".xml" else OnnxModel(checkpoint)
        check_runner_precision(runner, precision)
        if runner.num_classes != num_classes:
            raise ConfigError(f"{checkpoint} predicts {runner.num_classes} classes but the data has {num_classes}")
        return OnnxAsModule(runner), None
    model = model_from_checkpoint(ckpt, num_classes=num_classes, source=str(checkpoint)).to(dev)
    chosen, choice = resolve_precision(precision, dev, model=model)
    if chosen == "bf16" and dev.type == "cpu":
        return prepared_model(model.eval(), "bf16"), choice
    return model, choice


def run_eval(checkpoint: str, data: str, split: str = "val", *, bf: bool = False, out: str | None = None,
             overwrite: bool = False, batch_size: int = 1, workers: int | None = None, device: str = "auto",
             amp: str = "auto", channels_last: bool = False, progress: bool = True,
             mask_255: str | None = None, precision: str = "fp32") -> dict:
    """Load ``checkpoint`` safely, evaluate it on ``data``/``split``; write files to ``out``.

    ``mask_255`` ("ignore" or "class", see :mod:`fcnseg.data.mask_255`) defaults to the
    value the checkpoint was trained with. ``precision``: see :func:`eval_model` (``checkpoint``
    may be a ``.onnx`` or OpenVINO ``.xml`` file). On CPU, ``amp="auto"`` means full precision: eval's scores are exact
    unless a precision is asked for.

    Returns the :func:`evaluate` dict plus ``class_names``, ``checkpoint``, ``split`` and ``precision``
    (with ``precision_choice``, auto's reason, when auto decided).
    """
    workers = resolve_workers(workers)  # None -> usable CPUs - 1
    if batch_size < 1 or workers < 0:
        raise ConfigError("--batch-size must be >= 1 and --workers >= 0")
    if not Path(data).is_dir():
        raise DataError(f"--data {data}: no such directory; point it at a dataset root "
                        f"(VOC layout or images/ + masks/)")
    dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    info = D.init_distributed(dev.type)
    out_dir = None
    if out is not None:
        err = None
        if info.is_main:
            try:
                out_dir = prepare_output_dir(out, overwrite=overwrite, what="--out")
            except ConfigError as e:
                err = str(e)
        err = D.broadcast_object(err)  # every rank stops on rank 0's error (no hang)
        if err:
            raise ConfigError(err)
    is_exported = Path(checkpoint).suffix.lower() in (".onnx", ".xml")  # ONNX, or an OpenVINO IR
    # safe load (weights_only: a malicious pickle is refused)
    ckpt = None if is_exported else load_checkpoint(checkpoint)
    if mask_255 is None and ckpt is not None:  # as trained
        mask_255 = (ckpt.get("config") or {}).get("mask_255")
    ds = open_dataset(data, split, transforms=eval_transforms(), mask_255=mask_255)
    # The class count must match the data.
    model, choice = eval_model(checkpoint, ckpt, ds.num_classes, dev, precision)
    del ckpt
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = make_eval_loader(ds, batch_size=batch_size, workers=workers, device=dev)
    amp_dtype = None if (dev.type == "cpu" and amp == "auto") or precision != "fp32" else resolve_amp(amp, dev)
    result = evaluate(model, loader, ds.num_classes, dev, amp_dtype=amp_dtype,
                      channels_last=channels_last, bf=bf, progress=progress)
    result.update(class_names=list(ds.class_names), checkpoint=str(checkpoint), split=split,
                  precision=getattr(getattr(model, "runner", None), "precision", None)
                  or (choice.precision if choice else precision))
    if choice is not None:
        result["precision_choice"] = choice.reason
    if out_dir is not None and info.is_main:
        atomic_write_text(out_dir / "eval.json", to_json(result) + "\n")
        plot_confusion_matrix(result["confusion_matrix"], ds.class_names, out_dir / "confusion_matrix.png",
                              title=f"{Path(checkpoint).name} on {split}")
    return result


def cli_main(args: argparse.Namespace) -> int:
    try:
        result = run_eval(args.checkpoint, args.data, args.split, bf=args.bf, out=args.out,
                          overwrite=args.overwrite, batch_size=args.batch_size, workers=args.workers,
                          device=args.device, amp=args.amp, channels_last=args.channels_last,
                          progress=not args.json, mask_255=args.mask_255, precision=args.precision)
        if D.is_main_process():
            if args.json:
                print(to_json(result))
            else:
                print(f"{args.checkpoint} on {args.data} [{args.split}], {result['num_images']} images, "
                      f"{result['seconds']:.1f}s")
                print(scores_table(result, result["class_names"]))
                if args.out:
                    print(f"wrote {Path(args.out) / 'eval.json'} and {Path(args.out) / 'confusion_matrix.png'}")
        sys.stdout.flush()
        return 0
    finally:
        D.cleanup()
