"""``fcnseg check-data DIR``: read every image and mask of a dataset before training on it.

Training stops at the first bad file, possibly an hour in. This command reads every pair
of every split once, with the same readers training uses, and reports all problems at
once, one line each:

- unreadable, empty, truncated or non-image files; RGB / 16-bit masks;
- an image and its mask of different sizes;
- labels outside ``[0, num_classes)`` and 255 (ignore);
- a split that cannot be opened (missing files listed in a split file, ...).

and, as warnings (they do not make the check fail): masks holding only 0 and 255 (a binary
mask exported as 0/255: fcnseg reads 255 as "ignore"), masks holding a single class,
classes that appear in no mask, images in more than one split. It prints a summary (layout,
classes and where their names come from, pairs and image sizes per split, pixel share of
each label) and exits with 1 if any problem was found.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tqdm import tqdm

from fcnseg.constants import IGNORE_INDEX
from fcnseg.data import image_files
from fcnseg.data.base import SegmentationDataset
from fcnseg.data.datasets import open_dataset
from fcnseg.data.voc import resolve_voc_root
from fcnseg.errors import DataError
from fcnseg.labels import check_label_range

# Folder datasets without class_names.txt infer their classes from the labels: check them
# with the widest label set (every value but 255 is a class) and infer the count here.
_ALL_LABELS = [f"class_{i}" for i in range(IGNORE_INDEX)]


@dataclass
class SplitSummary:
    name: str  # "all" for a folder dataset without splits
    pairs: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)  # (W, H) of readable images


@dataclass
class CheckReport:
    """What :func:`check_dataset` found. ``problems`` fail the check; ``warnings`` do not."""

    root: Path
    layout: str = ""
    class_names: list[str] = field(default_factory=list)
    classes_from: str = ""
    splits: list[SplitSummary] = field(default_factory=list)
    label_pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))  # (256,)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def list_splits(root: str | Path) -> list[str | None]:
    """The splits a dataset defines: VOC split files; a folder dataset's ``images/<split>/``
    sub-folders (with their ``masks/<split>/``) or ``<split>.txt`` files; else ``[None]``
    (every pair of a folder dataset)."""
    root = Path(root)
    voc = resolve_voc_root(root)
    if voc is not None:
        sets = voc / "ImageSets" / "Segmentation"
        return sorted(p.stem for p in sets.glob("*.txt")) or ["train"]  # no split files: opening says so
    images, masks = root / "images", root / "masks"
    if images.is_dir():
        subdirs = sorted(d.name for d in images.iterdir() if d.is_dir() and (masks / d.name).is_dir())
        if subdirs:
            return subdirs
        texts = sorted(p.stem for p in root.glob("*.txt") if p.name != "class_names.txt")
        if texts:
            return texts
    return [None]


def check_dataset(root: str | Path, splits: list[str] | None = None, progress: bool = False) -> CheckReport:
    """Read every image and mask of ``splits`` (default: all, see :func:`list_splits`) of the
    dataset at ``root``; return what was found. Raises DataError only if ``root`` is not a
    dataset at all."""
    root = Path(root)
    report = CheckReport(root)
    voc = resolve_voc_root(root) is not None
    names_file = (resolve_voc_root(root) or root) / "class_names.txt"
    infer_classes = not voc and not names_file.is_file()
    report.layout = "PASCAL VOC layout" if voc else "images/ + masks/ folders"
    if names_file.is_file():
        report.classes_from = f"from {names_file.name}"
    elif voc:
        report.classes_from = "the 21 PASCAL VOC classes (no class_names.txt)"
    else:
        report.classes_from = "inferred as 1 + the largest label (no class_names.txt to name them)"
    if not voc and not (root / "images").is_dir():
        open_dataset(root, None)  # not a dataset: raises the DataError naming the accepted layouts
    wanted = list(splits) if splits else list_splits(root)
    seen_in: dict[str, list[str]] = {}  # image path -> splits listing it
    for split in wanted:
        label = split if split is not None else "all"
        try:
            kw = {"class_names": _ALL_LABELS} if infer_classes else {}
            # mask_255="ignore": read 0/255-only masks as they are (training refuses them without
            # --mask-255; here they are counted and reported as a warning naming that option).
            ds = open_dataset(root, split, mask_255="ignore", **kw)
        except DataError as e:
            report.problems.append(f"split {label}: {e}")
            continue
        if not report.class_names and not infer_classes:
            report.class_names = list(ds.class_names)
        summary = SplitSummary(label)
        report.splits.append(summary)
        for i in tqdm(range(len(ds)), desc=f"check {label}", unit="pair", disable=None if progress else True,
                      file=sys.stderr, leave=False):
            summary.pairs += 1
            seen_in.setdefault(str(ds.image_path(i)), []).append(label)
            _check_pair(ds, i, None if infer_classes else ds.num_classes, summary, report)
    if infer_classes:
        labelled = np.flatnonzero(report.label_pixels[:IGNORE_INDEX])
        n = int(labelled[-1]) + 1 if labelled.size else 0
        report.class_names = [f"class_{i}" for i in range(n)]
    _warnings(report, seen_in)
    return report


def _check_pair(ds: SegmentationDataset, i: int, num_classes: int | None, summary: SplitSummary,
                report: CheckReport) -> None:
    """Read pair ``i``; record its problems, its image size and its label counts."""
    image_path, mask_path = ds.image_path(i), ds.mask_path(i)
    image = mask = None
    try:
        image = image_files.read_image(image_path)  # (H, W, 3)
        summary.sizes.add((image.shape[1], image.shape[0]))
    except DataError as e:
        report.problems.append(str(e))
    try:
        mask = ds.read_mask(i) if num_classes is None else _read_mask_unchecked(ds, i)  # (H, W)
    except DataError as e:
        report.problems.append(str(e))
    if mask is None:
        return
    counts = np.bincount(mask.ravel(), minlength=256)  # (256,)
    report.label_pixels += counts
    if num_classes is not None:
        try:
            check_label_range(mask, num_classes, mask_path)
        except DataError as e:
            report.problems.append(str(e))
    if image is not None and image.shape[:2] != mask.shape:
        (ih, iw), (mh, mw) = image.shape[:2], mask.shape
        report.problems.append(f"size mismatch: image {image_path} is {iw}x{ih} (WxH) but its mask {mask_path} "
                               f"is {mw}x{mh}; masks must have their image's exact size")


def _read_mask_unchecked(ds: SegmentationDataset, i: int) -> np.ndarray:
    """Item ``i``'s mask without the label check (done by the caller, to count the labels too)."""
    path = ds.mask_path(i)
    return image_files.read_sbd_mask(path) if path.suffix.lower() == ".mat" else image_files.read_mask(path)


def _warnings(report: CheckReport, seen_in: dict[str, list[str]]) -> None:
    counts = report.label_pixels
    present = [int(v) for v in np.flatnonzero(counts[:IGNORE_INDEX])]
    if counts.sum() == 0:
        return
    if present == [0] and counts[IGNORE_INDEX] > 0:
        report.warnings.append(
            "every mask holds only the values 0 and 255; fcnseg reads 255 as 'ignore', so these masks "
            "teach a single class (0). If 255 marks your objects (a binary mask saved as 0/255), they "
            "must be labelled 1: class indices are 0..N-1, 255 = ignore. `fcnseg train --mask-255 class` "
            "reads them as background/foreground; `--mask-255 ignore` keeps 255 as ignore")
    elif len(present) == 1:
        report.warnings.append(f"every mask holds a single class ({present[0]}); a model trained on them "
                               f"learns nothing: check the masks hold class indices")
    names = report.class_names
    absent = [f"{c} ({names[c]})" for c in range(len(names)) if counts[c] == 0]
    if absent and len(present) > 1:
        report.warnings.append(f"{len(absent)} of {len(names)} classes appear in no mask of the checked splits: "
                               f"{', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''}")
    shared = sorted(p for p, splits in seen_in.items() if len(set(splits)) > 1)
    if shared:
        where = "/".join(sorted(set(seen_in[shared[0]])))
        report.warnings.append(f"{len(shared)} images are in more than one split (e.g. {shared[0]} in {where}); "
                               f"scores on a split that shares images with training are optimistic")


def format_report(report: CheckReport) -> list[str]:
    """The summary lines, then one line per problem and per warning, then the verdict."""
    names = report.class_names
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    lines = [f"dataset {report.root}: {report.layout}; {len(names)} class{'es' * (len(names) != 1)}, "
             f"{report.classes_from}"
             + (f": {shown}" if names else "")]
    for s in report.splits:
        sizes = sorted(s.sizes)
        size_text = ("no readable image" if not sizes else f"image size {sizes[0][0]}x{sizes[0][1]}"
                     if len(sizes) == 1 else f"{len(sizes)} image sizes, {sizes[0][0]}x{sizes[0][1]} .. "
                     f"{sizes[-1][0]}x{sizes[-1][1]} (WxH)")
        lines.append(f"split {s.name}: {s.pairs} pairs, {size_text}")
    total = int(report.label_pixels.sum())
    if total:
        parts = []
        for v in np.flatnonzero(report.label_pixels):
            name = "ignore" if v == IGNORE_INDEX else names[v] if v < len(names) else "out of range"
            parts.append(f"{v} {name} {100 * report.label_pixels[v] / total:.1f}%")
        lines.append("label pixels: " + ", ".join(parts))
    lines += [f"problem: {p}" for p in report.problems]
    lines += [f"warning: {w}" for w in report.warnings]
    pairs = sum(s.pairs for s in report.splits)
    n_p, n_w = len(report.problems), len(report.warnings)
    lines.append(f"{'FAILED' if n_p else 'OK'}: checked {pairs} pairs in {len(report.splits)} split(s): "
                 f"{n_p} problem{'s' * (n_p != 1)}, {n_w} warning{'s' * (n_w != 1)}")
    return lines


# ----------------------------------------------------------------------------- CLI

def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", metavar="DIR", help="dataset root (VOC layout or images/ + masks/)")
    p.add_argument("--split", action="append", metavar="S", dest="splits",
                   help="check only this split (repeatable; default: every split the dataset defines)")
    p.epilog = "exit codes: 0 no problem (warnings allowed), 1 problems found (one line each), 2 not a dataset"


def cli_main(args: argparse.Namespace) -> int:
    if not Path(args.root).is_dir():
        raise DataError(f"{args.root}: no such directory; give a dataset root (VOC layout or images/ + masks/)")
    report = check_dataset(args.root, args.splits, progress=True)
    for line in format_report(report):
        print(line)
    return 0 if report.ok else 1


__all__ = ["CheckReport", "SplitSummary", "check_dataset", "list_splits", "format_report",
           "add_cli_arguments", "cli_main"]
