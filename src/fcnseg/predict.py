"""``fcnseg predict``: segment files, folders and globs; write palette PNGs, overlays,
probability heatmaps and ground-truth comparison panels.

Per input ``<stem>`` (same size as the input, never resized):

- ``<stem>.png``: VOC-style palette PNG of class indices (checkpoint palette, else VOC's);
- ``<stem>_overlay.png``: colours blended over the photo (``--alpha``) + a class legend;
- ``<stem>_prob_<class>.png`` with ``--heatmaps``: one probability heatmap per class;
- ``<stem>_panel.png`` with ``--gt DIR``: image | ground truth | prediction | errors,
  ground truth read from ``DIR/<stem>.png``.

Runtimes: ``torch`` (an fcnseg checkpoint), ``onnx`` (a .onnx file from ``fcnseg export``,
run with onnxruntime) or ``openvino`` (a .xml + .bin IR from ``fcnseg export --format openvino``,
run with OpenVINO); the exported paths never import torch, so this module imports the torch
stack only inside the torch branch. The work is done by :mod:`fcnseg.infer`.
Unreadable inputs are reported and skipped; the exit code is 1 if any failed, and nothing
is created when none succeeded.

The files of one input are written as a set (:mod:`fcnseg.output_set`): all appear or
none, also on Ctrl-C, which reports "n of N inputs done" and exits with 130.
``--skip-existing`` then finishes the rest, skipping inputs whose set is complete.
"""
from __future__ import annotations

import argparse
import glob
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fcnseg.constants import IMAGE_SUFFIXES, PRECISIONS as PRECISION_CHOICES
from fcnseg.data.image_files import read_image, read_mask, write_palette_png
from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.infer import visualize
from fcnseg.infer.crf import require_pydensecrf
from fcnseg.infer.onnx_runner import OnnxModel
from fcnseg.infer.openvino_runner import OpenVinoModel
from fcnseg.infer.runner import check_runner_precision
from fcnseg.infer.segment import AUTO_OVERLAP, AUTO_TILE, AUTO_TILE_PIXELS, default_overlap, segment_array
from fcnseg.labels import class_names_or_default
from fcnseg.output_set import OutputSet, is_complete
from fcnseg.outputs import atomic_save_image, prepare_output_dir
# Per-file failures that mean "this input is bad", not "fcnseg has a bug": reported and skipped.
_FILE_ERRORS = (FcnsegError, OSError, MemoryError)


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (their images, not recursive) or glob patterns "
                        "(quote them: 'photos/**/*.jpg')")
    p.add_argument("--checkpoint", "--model", dest="checkpoint", required=True, metavar="CKPT",
                   help="fcnseg checkpoint (.pt), or an exported .onnx or OpenVINO .xml model")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty unless --overwrite)")
    p.add_argument("--alpha", type=float, default=0.4, help="overlay opacity of the class colours (default 0.4)")
    p.add_argument("--heatmaps", action="store_true", help="also write <stem>_prob_<class>.png per class")
    p.add_argument("--gt", metavar="DIR", help="ground-truth masks DIR/<stem>.png: write <stem>_panel.png")
    p.add_argument("--crf", action="store_true", help="refine with a dense CRF (needs pydensecrf2)")
    p.add_argument("--tile", metavar="SIZE|auto", default=None,
                   help="tiled inference with SIZE px tiles (bounded memory for huge images); "
                        f"'auto' uses {AUTO_TILE} px tiles for images above {AUTO_TILE_PIXELS / 1e6:.1f} MP")
    p.add_argument("--overlap", type=int, default=None, metavar="PX",
                   help=f"tile overlap in px (default SIZE/4; {AUTO_OVERLAP} with --tile auto)")
    p.add_argument("--runtime", choices=["torch", "onnx", "openvino"], default=None,
                   help="default: onnx for a .onnx model, openvino for a .xml one, else torch")
    p.add_argument("--device", default="auto",
                   help="auto (default: the GPU if PyTorch sees one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="auto (default: bf16 where a short probe measures it faster on this CPU, else fp32), "
                        "fp32, bf16, or int8 (a model from `fcnseg export --int8`)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip inputs whose outputs are all in --out already (e.g. to finish an interrupted "
                        "run); other inputs are written, so a non-empty --out is accepted")


@dataclass
class Outputs:
    """What to write for each input."""

    out_dir: Path
    alpha: float = 0.4
    heatmaps: bool = False
    gt_dir: Path | None = None
    crf: bool = False
    tile: int | str | None = None
    overlap: int | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    skip_existing: bool = False
    done: int = 0  # inputs whose outputs were written by this run
    skipped: int = 0  # inputs skipped by skip_existing (their outputs were complete)


def cli_main(args: argparse.Namespace) -> int:
    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha {args.alpha}: must be between 0 and 1")
    tile = _parse_tile(args.tile, args.overlap)
    if args.gt is not None and not Path(args.gt).is_dir():
        raise ConfigError(f"--gt {args.gt}: not a folder; give the folder holding <stem>.png masks")
    files, failures = collect_inputs(args.inputs)
    if not files:
        detail = "; ".join(f"{n}: {r}" for n, r in failures)
        raise ConfigError(f"no input images found ({detail}); give image files, folders or globs")
    _check_unique_stems(files)
    model = load_runner(args.checkpoint, args.runtime, args.device, precision=args.precision)
    if args.crf:
        require_pydensecrf()  # fail before any work, not on the first image
    choice = getattr(model, "choice", None)
    if choice is not None:  # auto decided by measurement: say what and why, once
        print(f"fcnseg predict: precision {choice.reason}", file=sys.stderr)  # a note, not a result
    new_dirs = _missing_dirs(Path(args.out))  # what prepare_output_dir creates: removed if nothing is written
    out_dir = prepare_output_dir(args.out, overwrite=args.overwrite or args.skip_existing,
                                 what="prediction output")
    opts = Outputs(out_dir, args.alpha, args.heatmaps, Path(args.gt) if args.gt else None,
                   args.crf, tile, args.overlap, failures, skip_existing=args.skip_existing)
    # Each argument that named no image counts as one failed input; a folder counts its images.
    total = len(files) + len(failures)
    try:
        run(model, files, opts)
    except KeyboardInterrupt:
        n_ok = opts.done + opts.skipped
        if n_ok == 0:
            _remove_empty(new_dirs)
        where = (f"outputs in {out_dir}; to finish, run the same command with --skip-existing" if n_ok
                 else "nothing written")
        print(f"fcnseg predict: interrupted: {n_ok} of {total} inputs done; {where}", file=sys.stderr)
        return 130
    n_ok = opts.done + opts.skipped
    done = f"{n_ok} of {total} inputs done" + (f" ({opts.skipped} already done: skipped)" if opts.skipped else "")
    if n_ok == 0:
        _remove_empty(new_dirs)  # nothing succeeded: leave nothing behind
    if opts.failures:
        listed = "; ".join(f"{name} ({reason})" for name, reason in opts.failures)
        where = f"outputs in {out_dir}" if n_ok else "nothing written"
        print(f"fcnseg predict: {done}, {len(opts.failures)} failed: {listed}; {where}", file=sys.stderr)
        return 1
    print(f"fcnseg predict: {done}; outputs in {out_dir}")
    return 0


def run(model, files: list[Path], opts: Outputs) -> None:
    """Segment ``files`` and write their outputs; failures are appended to ``opts.failures``."""
    bar = tqdm(files, desc="predict", unit="img", disable=None, file=sys.stderr)
    for path in bar:
        if opts.skip_existing and is_complete(opts.out_dir, output_names(model, path.stem, opts)):
            opts.skipped += 1
            continue
        try:
            predict_file(model, path, opts)  # counts opts.done
        except _FILE_ERRORS as e:
            reason = str(e) if isinstance(e, FcnsegError) else f"{type(e).__name__}: {e}"
            opts.failures.append((str(path), reason))
            tqdm.write(f"fcnseg predict: skipped {path}: {reason}", file=sys.stderr)


def output_names(model, stem: str, opts: Outputs) -> list[str]:
    """The files written for input ``stem`` with these options; the marker ``<stem>.png`` last."""
    names = [f"{stem}_overlay.png"]
    if opts.heatmaps:
        class_names = class_names_or_default(getattr(model, "class_names", None), model.num_classes)
        names += [f"{stem}_prob_{safe_name(c)}.png" for c in class_names]
    if opts.gt_dir is not None:
        names.append(f"{stem}_panel.png")
    return names + [f"{stem}.png"]


def predict_file(model, path: Path, opts: Outputs) -> None:
    """Segment one image file and write all requested outputs as a set: every file appears,
    or (on an error or Ctrl-C before the end) none does; see :mod:`fcnseg.output_set`."""
    image = read_image(path)  # uint8 (H, W, 3)
    n = model.num_classes
    gt = None
    if opts.gt_dir is not None:  # read before the (slow) inference: a bad mask fails fast
        gt_path = opts.gt_dir / f"{path.stem}.png"
        if not gt_path.is_file():
            raise ConfigError(f"no ground truth {gt_path} for {path.name}; add it or drop --gt")
        gt = read_mask(gt_path, n)
        if gt.shape != image.shape[:2]:
            raise ConfigError(f"ground truth {gt_path} is {gt.shape[1]}x{gt.shape[0]} but the image is "
                              f"{image.shape[1]}x{image.shape[0]}; masks must match their images")
    want_probs = opts.heatmaps
    # Heatmaps are 8-bit: quantised probabilities need a quarter of float32's memory.
    out = segment_array(model, image, tile=opts.tile, overlap=opts.overlap, crf=opts.crf,
                        return_probs=want_probs, probs_dtype=np.uint8)
    labels, probs = out if want_probs else (out, None)
    names = class_names_or_default(getattr(model, "class_names", None), n)
    palette = getattr(model, "palette", None)
    stem = path.stem
    files = OutputSet(opts.out_dir, output_names(model, stem, opts))
    try:
        write_palette_png(labels, palette, files.path(f"{stem}.png"))
        atomic_save_image(visualize.overlay(image, labels, palette, names, opts.alpha),
                          files.path(f"{stem}_overlay.png"))
        if probs is not None:
            for c in range(n):
                atomic_save_image(visualize.heatmap(probs[c]), files.path(f"{stem}_prob_{safe_name(names[c])}.png"))
        if gt is not None:
            atomic_save_image(visualize.error_panel(image, gt, labels, palette, names),
                              files.path(f"{stem}_panel.png"))
        files.commit()  # a Ctrl-C during the renames is raised right after them
    finally:
        if files.committed:  # counted even when that deferred Ctrl-C is on its way
            opts.done += 1
        files.discard()


# Exported models: runtime -> (file suffix, runner class, what `fcnseg export` needs to write one).
EXPORTED = {"onnx": (".onnx", OnnxModel, ""), "openvino": (".xml", OpenVinoModel, " --format openvino")}


def load_runner(path: str, runtime: str | None, device: str, precision: str = "auto"):
    """The model to run: an OnnxModel or OpenVinoModel (no torch), or a TorchRunner over the checkpoint.

    ``runtime`` None picks it from the suffix (.onnx: onnx, .xml: openvino, else torch).
    ``precision`` (:data:`PRECISION_CHOICES`): an exported model computes in the precision it was
    exported in (ConfigError if another is asked); a checkpoint runs in ``precision``.
    """
    path_ = Path(path)
    by_suffix = {suffix: name for name, (suffix, _, _) in EXPORTED.items()}
    detected = by_suffix.get(path_.suffix.lower())
    runtime = runtime or detected or "torch"
    if runtime in EXPORTED:
        suffix, runner_class, fmt = EXPORTED[runtime]
        if detected != runtime:
            raise ConfigError(f"--runtime {runtime} needs a {suffix} model, got {path}; create one with "
                              f"`fcnseg export --checkpoint CKPT{fmt} --out model{suffix}`")
        runner = runner_class(path_, device=device)
        check_runner_precision(runner, precision)
        return runner
    if detected is not None:
        raise ConfigError(f"{path} is an exported {detected} model; run it with --runtime {detected} "
                          f"(or give a .pt checkpoint)")
    # Lazy: the torch stack loads only for a torch checkpoint (the exported paths never import torch).
    from fcnseg.api import load_model
    from fcnseg.infer.torch_runner import TorchRunner

    return TorchRunner(load_model(path_, device=device), precision=precision)


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders and globs into a sorted, de-duplicated list of image files.

    Returns ``(files, failures)``; an argument that names nothing usable is a failure
    ``(argument, reason)`` so it is reported with the others instead of stopping the run.
    """
    files: list[Path] = []
    failures: list[tuple[str, str]] = []
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failures.append((arg, f"folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"))
            files += found
        elif p.is_file():
            files.append(p)  # explicit files are tried whatever their suffix
        elif glob.has_magic(arg):
            found = sorted(Path(q) for q in glob.glob(arg, recursive=True)
                           if Path(q).is_file() and Path(q).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failures.append((arg, "no image files match this pattern"))
            files += found
        else:
            failures.append((arg, "no such file or folder"))
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, failures


def safe_name(name: str) -> str:
    """A class name usable in a file name ('potted plant' -> 'potted_plant')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def _check_unique_stems(files: list[Path]) -> None:
    by_stem: dict[str, Path] = {}
    for f in files:
        if f.stem in by_stem:
            raise ConfigError(f"inputs {by_stem[f.stem]} and {f} would both write {f.stem}.png; "
                              f"rename one or predict them into different --out folders")
        by_stem[f.stem] = f


def _parse_tile(tile: str | None, overlap: int | None) -> int | str | None:
    if tile is None:
        if overlap is not None:
            raise ConfigError("--overlap needs --tile SIZE (or --tile auto)")
        return None
    if tile == "auto":
        return "auto"
    try:
        t = int(tile)
    except ValueError:
        raise ConfigError(f"--tile {tile!r}: give a size in pixels (e.g. 512) or 'auto'") from None
    ov = default_overlap(t) if overlap is None else overlap
    if t < 64 or not 0 <= ov < t:
        raise ConfigError(f"--tile {t} --overlap {ov}: need a tile of at least 64 px and 0 <= overlap < tile")
    return t


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(dirs: list[Path]) -> None:
    """Remove ``dirs`` (deepest first) that are empty: folders this run created for nothing."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:  # not empty (someone else wrote there) or already gone
            return


__all__ = ["add_cli_arguments", "cli_main", "collect_inputs", "output_names", "predict_file", "load_runner",
           "run"]
