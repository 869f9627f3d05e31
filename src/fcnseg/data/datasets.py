"""Segmentation datasets: PASCAL VOC layout (optionally + SBD) and image/mask folder pairs.

Every dataset yields ``(image float32 (3, H, W), mask int64 (H, W))`` after its paired
transforms (default: ImageNet normalisation only), with 255 = ignore in the mask, and
exposes ``num_classes``, ``class_names``, ``palette`` (``(r, g, b)`` per index, 256
entries), ``ids``, ``image_path(i)`` and ``mask_path(i)``. :func:`open_dataset` picks the
layout from what is on disk.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.data import io
from fcnseg.data.transforms import ToTensorNormalize
from fcnseg.errors import ConfigError, DataError
from fcnseg.optional import require

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif")

VOC_LAYOUT = ("VOC: JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
              "ImageSets/Segmentation/<split>.txt [, class_names.txt]")
FOLDER_LAYOUT = ("folder pairs: images/<name>.jpg|png + masks/<name>.png matched by file stem "
                 "(optionally images/<split>/ + masks/<split>/ or <split>.txt) [, class_names.txt]")

Transform = Callable[[np.ndarray, np.ndarray], tuple]


class SegmentationDataset(Dataset):
    """Base: a list of (id, image path, mask path) plus class metadata.

    Subclasses fill ``ids``, ``_images``, ``_masks``, ``num_classes``, ``class_names`` and
    ``palette``. Masks ending in ``.mat`` are SBD masks; all others are PNG-like.
    """

    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    ids: list[str]

    def __init__(self, transforms: Transform | None = None):
        self.transforms = transforms
        self._default_transform = ToTensorNormalize()
        self.ids = []
        self._images: list[Path] = []
        self._masks: list[Path] = []

    def __len__(self) -> int:
        return len(self.ids)

    def _index(self, i: int) -> int:
        n = len(self.ids)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} items")
        return j

    def image_path(self, i: int) -> Path:
        """Path of item ``i``'s image."""
        return self._images[self._index(i)]

    def mask_path(self, i: int) -> Path:
        """Path of item ``i``'s mask (``.png``, or ``.mat`` for SBD items)."""
        return self._masks[self._index(i)]

    def read_mask(self, i: int) -> np.ndarray:
        """Item ``i``'s mask, uint8 (H, W), labels validated against ``num_classes``."""
        path = self.mask_path(i)
        if path.suffix.lower() == ".mat":
            return io.read_sbd_mask(path, self.num_classes)
        return io.read_mask(path, self.num_classes, not_found_hint=io.DATASET_HINT)

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw item ``i``: image uint8 (H, W, 3) and mask uint8 (H, W), sizes checked."""
        image = io.read_image(self.image_path(i), not_found_hint=io.DATASET_HINT)
        mask = self.read_mask(i)
        if image.shape[:2] != mask.shape:
            ih, iw = image.shape[:2]
            mh, mw = mask.shape
            raise DataError(f"size mismatch: image {self.image_path(i)} is {iw}x{ih} (WxH) but its "
                            f"mask {self.mask_path(i)} is {mw}x{mh}; masks must have their "
                            f"image's exact size")
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load_pair(i)
        t = self.transforms if self.transforms is not None else self._default_transform
        return t(image, mask)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} items, num_classes={self.num_classes}, "
                f"root={getattr(self, 'root', None)})")


# ----------------------------------------------------------------------------- helpers

def read_class_names(path: Path) -> list[str]:
    """``class_names.txt``: one name per line (blank lines skipped). Must be 1..255 unique names."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class names file {path}: {e}; it must be UTF-8 text, "
                        f"one class name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"class names file {path} is empty; write one class name per line "
                        f"(line i = label i)")
    if len(names) > 255:
        raise DataError(f"class names file {path} lists {len(names)} classes; at most 255 fit "
                        f"uint8 masks with 255 = ignore")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise DataError(f"class names file {path} repeats {dups}; each line must name a different class")
    return names


def _palette_for(mask_path: Path) -> list[tuple[int, int, int]]:
    """256 colours: the first mask's own palette (data-derived) padded with VOC colours."""
    own = io.read_palette(mask_path) if mask_path.suffix.lower() != ".mat" else None
    pal = list(own or [])[:256]
    return pal + io.default_palette(256)[len(pal):]


def _listing(folder: Path, limit: int = 15) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    except OSError:
        return "(unreadable)"
    if not names:
        return "(empty)"
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def _read_split(path: Path) -> list[str]:
    """Ids from a split file: one per line; the first whitespace-separated token counts."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from None
    ids = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise DataError(f"split file {path} lists no ids; write one image id per line")
    return list(dict.fromkeys(ids))  # drop duplicates, keep order


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in (".jpg",) + IMAGE_SUFFIXES[1:]:
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def resolve_voc_root(root: Path) -> Path | None:
    """``root`` itself, or ``root/VOCdevkit/VOC2012`` / ``root/VOC2012`` (as extracted), if VOC-like."""
    for cand in (root, root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if (cand / "JPEGImages").is_dir() or (cand / "SegmentationClass").is_dir():
            return cand
    return None


def _resolve_sbd_root(sbd_root: Path) -> Path:
    for cand in (sbd_root, sbd_root / "dataset", sbd_root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir():
            return cand
    raise DataError(f"SBD root {sbd_root} has no cls/ folder (expected cls/<id>.mat, img/<id>.jpg, "
                    f"train.txt, val.txt; found: {_listing(sbd_root) if sbd_root.is_dir() else 'nothing'}); "
                    f"pass the folder benchmark_RELEASE/dataset from benchmark.tgz")


# ----------------------------------------------------------------------------- VOC

class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``,
    ``ImageSets/Segmentation/<split>.txt``; ``root`` may also be the folder holding
    ``VOCdevkit/VOC2012`` as extracted from the official tar.

    Classes come from ``root/class_names.txt`` (one per line) if present, else the 21 VOC
    classes. The palette is the first mask's PNG palette, else the VOC colour map.

    With ``sbd_root`` (SBD's ``benchmark_RELEASE/dataset``) and ``split="train"``, the
    SBD ids of ``sbd_splits`` that are not in VOC ``val`` are added ("train_aug": with the
    default ``("train", "val")`` that is the usual 10582 images). VOC's own PNG is used
    when an id has both; SBD masks are ``cls/<id>.mat`` (needs scipy).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: Transform | None = None,
                 sbd_root: str | os.PathLike | None = None,
                 sbd_splits: Sequence[str] = ("train", "val")):
        super().__init__(transforms)
        given = Path(root)
        if not given.is_dir():
            raise DataError(f"dataset root {given} does not exist or is not a folder; expected {VOC_LAYOUT}")
        root_ = resolve_voc_root(given) or given
        self.root, self.split = root_, split
        img_dir, mask_dir = root_ / "JPEGImages", root_ / "SegmentationClass"
        sets_dir = root_ / "ImageSets" / "Segmentation"
        missing = [f"{d.name}/" for d in (img_dir, mask_dir) if not d.is_dir()]
        if not sets_dir.is_dir():
            missing.append("ImageSets/Segmentation/")
        if missing:
            raise DataError(f"VOC dataset root {root_} is incomplete: missing {', '.join(missing)}; "
                            f"expected {VOC_LAYOUT}; found: {_listing(root_)}")
        split_file = sets_dir / f"{split}.txt"
        if not split_file.is_file():
            found = sorted(p.stem for p in sets_dir.glob("*.txt"))
            raise DataError(f"split file {split_file} not found; available splits in {sets_dir}: "
                            f"{', '.join(found) or 'none'}")

        for id_ in _read_split(split_file):
            img = _find_image(img_dir, id_)
            mask = mask_dir / f"{id_}.png"
            for path, kind in ((img, "image"), (mask, "mask")):
                if path is None or not path.is_file():
                    shown = path or img_dir / f"{id_}.jpg"
                    raise DataError(f"split file {split_file} lists id {id_!r} but its {kind} {shown} "
                                    f"is missing; add the file or remove the id from the split file")
            self.ids.append(id_)
            self._images.append(img)  # type: ignore[arg-type]
            self._masks.append(mask)

        if sbd_root is not None and split == "train":
            self._add_sbd(Path(sbd_root), sets_dir, img_dir, sbd_splits)

        names_file = root_ / "class_names.txt"
        self.class_names = read_class_names(names_file) if names_file.is_file() else list(VOC_CLASSES)
        self.num_classes = len(self.class_names)
        self.palette = _palette_for(self._masks[0])

    def _add_sbd(self, sbd_root: Path, sets_dir: Path, img_dir: Path, sbd_splits: Sequence[str]) -> None:
        sbd = _resolve_sbd_root(sbd_root)
        val_file = sets_dir / "val.txt"
        if not val_file.is_file():
            raise DataError(f"adding SBD needs VOC's {val_file} (SBD images in VOC val are left out "
                            f"to keep val unseen); restore it")
        exclude = set(_read_split(val_file)) | set(self.ids)
        # Fail now, not in a DataLoader worker.
        require("scipy.io", "adding SBD (MATLAB .mat masks; or train without --sbd)")
        for name in sbd_splits:
            split_file = sbd / f"{name}.txt"
            if not split_file.is_file():
                raise DataError(f"SBD split file {split_file} not found; found: {_listing(sbd)}")
            for id_ in _read_split(split_file):
                if id_ in exclude:
                    continue
                exclude.add(id_)
                img = _find_image(img_dir, id_) or _find_image(sbd / "img", id_)
                mask = sbd / "cls" / f"{id_}.mat"
                if img is None or not mask.is_file():
                    missing = mask if img is not None else sbd / "img" / f"{id_}.jpg"
                    raise DataError(f"SBD split file {split_file} lists id {id_!r} but {missing} is "
                                    f"missing; re-extract SBD")
                self.ids.append(id_)
                self._images.append(img)
                self._masks.append(mask)


# ----------------------------------------------------------------------------- folder pairs

# (masks folder, signature of its files) -> num_classes found by scanning: scan once per process.
_SCAN_CACHE: dict[tuple[str, tuple], int] = {}


class FolderPairs(SegmentationDataset):
    """``images/`` + ``masks/`` folders, matched by file stem (``a.jpg`` <-> ``a.png``).

    Splits: ``split=None`` takes every pair; otherwise ``images/<split>/`` + ``masks/<split>/``
    if they exist, else the stems listed in ``root/<split>.txt``.

    Classes: ``class_names`` (argument) or ``root/class_names.txt``; otherwise
    ``num_classes = 1 + the largest label (other than 255) in any mask under masks/``,
    over all splits so train and val agree. That scan decodes every mask once; the
    result is cached per process. Writing ``class_names.txt`` avoids the scan and is
    safer (a class absent from every mask cannot be detected).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None,
                 transforms: Transform | None = None, class_names: Sequence[str] | None = None):
        super().__init__(transforms)
        root_ = Path(root)
        self.root, self.split = root_, split
        images_root, masks_root = root_ / "images", root_ / "masks"
        missing = [f"{d.name}/" for d in (images_root, masks_root) if not d.is_dir()]
        if missing:
            found = _listing(root_) if root_.is_dir() else "nothing (the folder does not exist)"
            raise DataError(f"folder dataset {root_} is missing {', '.join(missing)}; expected "
                            f"{FOLDER_LAYOUT}; found: {found}")

        stems: list[str] | None = None
        if split is None:
            img_dir, mask_dir = images_root, masks_root
        elif (images_root / split).is_dir():
            img_dir, mask_dir = images_root / split, masks_root / split
        elif (root_ / f"{split}.txt").is_file():
            img_dir, mask_dir = images_root, masks_root
            stems = _read_split(root_ / f"{split}.txt")
        else:
            raise DataError(f"folder dataset {root_} has no split {split!r}: expected images/{split}/ + "
                            f"masks/{split}/ or {root_ / (split + '.txt')}; pass split=None to use "
                            f"every pair")

        images = _files_by_stem(img_dir, IMAGE_SUFFIXES)
        masks = _files_by_stem(mask_dir, MASK_SUFFIXES) if mask_dir.is_dir() else {}
        if stems is not None:
            absent = [s for s in stems if s not in images]
            if absent:
                raise DataError(f"split file {root_ / (split + '.txt')} lists {len(absent)} ids with no "
                                f"image in {img_dir}: {', '.join(absent[:10])}")
            images = {s: images[s] for s in stems}
        if not images:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {img_dir}")
        no_mask = [images[s].name for s in images if s not in masks]
        if no_mask:
            raise DataError(f"{len(no_mask)} images in {img_dir} have no mask in {mask_dir} (matched by "
                            f"file stem): {', '.join(no_mask[:10])}{', ...' if len(no_mask) > 10 else ''}; "
                            f"add <stem>.png masks or remove these images")
        for stem in sorted(images):
            self.ids.append(stem)
            self._images.append(images[stem])
            self._masks.append(masks[stem])

        names_file = root_ / "class_names.txt"
        if class_names is not None:
            self.class_names = [str(n) for n in class_names]
            if not 1 <= len(self.class_names) <= 255:
                raise ConfigError(f"class_names must list 1..255 names, got {len(self.class_names)}")
        elif names_file.is_file():
            self.class_names = read_class_names(names_file)
        else:
            n = _scan_num_classes(masks_root)
            self.class_names = [f"class_{i}" for i in range(n)]
        self.num_classes = len(self.class_names)
        self.palette = _palette_for(self._masks[0])


def _files_by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """``{stem: path}`` of the (non-hidden) files in ``folder`` with one of ``suffixes``."""
    if not folder.is_dir():
        raise DataError(f"folder {folder} not found")
    out: dict[str, Path] = {}
    for p in folder.iterdir():
        if p.name.startswith(".") or p.suffix.lower() not in suffixes or not p.is_file():
            continue
        if p.stem in out:
            raise DataError(f"two files in {folder} share the stem {p.stem!r} ({out[p.stem].name}, "
                            f"{p.name}); masks are matched by stem, so keep one")
        out[p.stem] = p
    return out


def _scan_num_classes(masks_root: Path) -> int:
    """1 + the largest non-ignore label over every mask under ``masks_root`` (cached)."""
    files = sorted(p for p in masks_root.rglob("*")
                   if p.suffix.lower() in MASK_SUFFIXES and p.is_file() and not p.name.startswith("."))
    sig = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(masks_root.resolve()), sig)
    if key not in _SCAN_CACHE:
        largest = -1
        for p in files:
            counts = np.bincount(io.read_mask(p).ravel(), minlength=256)[:io.IGNORE_INDEX]
            nz = np.flatnonzero(counts)
            if nz.size:
                largest = max(largest, int(nz[-1]))
        if largest < 0:
            raise DataError(f"every mask under {masks_root} is empty or all 255 (ignore); cannot "
                            f"infer the classes: write class_names.txt")
        _SCAN_CACHE[key] = largest + 1
    return _SCAN_CACHE[key]


# ----------------------------------------------------------------------------- auto-detection

def open_dataset(root: str | os.PathLike, split: str | None = "train", transforms: Transform | None = None,
                 **kw) -> SegmentationDataset:
    """Open ``root`` as VOC layout (``sbd_root=``, ``sbd_splits=`` accepted) or folder pairs
    (``class_names=`` accepted), whichever is on disk. Keyword arguments that are None are
    ignored, so callers may pass e.g. ``sbd_root=args.sbd`` unconditionally.
    """
    root_ = Path(root)
    if not root_.is_dir():
        raise DataError(f"dataset root {root_} does not exist or is not a folder; accepted layouts: "
                        f"{VOC_LAYOUT}; or {FOLDER_LAYOUT}")
    kw = {k: v for k, v in kw.items() if v is not None}
    if resolve_voc_root(root_) is not None:
        _check_kwargs(kw, {"sbd_root", "sbd_splits"}, "VOC")
        return VOCSegmentation(root_, split="train" if split is None else split,
                               transforms=transforms, **kw)
    if (root_ / "images").is_dir():
        _check_kwargs(kw, {"class_names"}, "folder-pairs")
        return FolderPairs(root_, split=split, transforms=transforms, **kw)
    raise DataError(f"{root_} is not a dataset folder; accepted layouts: {VOC_LAYOUT}; or "
                    f"{FOLDER_LAYOUT}; found: {_listing(root_)}")


def _check_kwargs(kw: dict, allowed: set[str], layout: str) -> None:
    bad = sorted(set(kw) - allowed)
    if bad:
        raise ConfigError(f"options {bad} do not apply to a {layout} dataset (accepted: {sorted(allowed)})")
