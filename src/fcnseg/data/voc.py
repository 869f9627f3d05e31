"""PASCAL VOC layout (optionally with SBD's extra training masks)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from fcnseg.constants import VOC_CLASSES
from fcnseg.data import mask_255 as m255
from fcnseg.data.base import (SegmentationDataset, Transform, find_image, inferred_class_names, listing,
                              palette_for, read_class_names, read_split, scan_labels, split_file_arg)
from fcnseg.errors import DataError
from fcnseg.optional import require

VOC_LAYOUT = ("VOC: JPEGImages/<id>.jpg, SegmentationClass/<id>.png, "
              "ImageSets/Segmentation/<split>.txt [, class_names.txt]")


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
                    f"train.txt, val.txt; found: {listing(sbd_root) if sbd_root.is_dir() else 'nothing'}); "
                    f"pass the folder benchmark_RELEASE/dataset from benchmark.tgz")



class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC layout: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``,
    ``ImageSets/Segmentation/<split>.txt``; ``root`` may also be the folder holding
    ``VOCdevkit/VOC2012`` as extracted from the official tar.

    Classes come from ``root/class_names.txt`` (one per line) if present, else the 21 VOC
    classes (with ``mask_255="class"`` and no ``class_names.txt``: the classes found in the
    masks, 255 the last). The palette is the first mask's PNG palette, else the VOC colour map.
    ``split`` may be a split file (a path ending in ``.txt``). Masks holding only 0 and 255
    are refused unless ``mask_255`` says what 255 means (:mod:`fcnseg.data.mask_255`).

    With ``sbd_root`` (SBD's ``benchmark_RELEASE/dataset``) and ``split="train"``, the
    SBD ids of ``sbd_splits`` that are not in VOC ``val`` are added ("train_aug": with the
    default ``("train", "val")`` that is the usual 10582 images). VOC's own PNG is used
    when an id has both; SBD masks are ``cls/<id>.mat`` (needs scipy).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: Transform | None = None,
                 sbd_root: str | os.PathLike | None = None,
                 sbd_splits: Sequence[str] = ("train", "val"), mask_255: str | None = None):
        super().__init__(transforms)
        self.mask_255 = m255.check_mode(mask_255)
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
                            f"expected {VOC_LAYOUT}; found: {listing(root_)}")
        split_file = split_file_arg(split) or sets_dir / f"{split}.txt"
        if not split_file.is_file():
            found = sorted(p.stem for p in sets_dir.glob("*.txt"))
            raise DataError(f"split file {split_file} not found; available splits in {sets_dir}: "
                            f"{', '.join(found) or 'none'}")

        for id_ in read_split(split_file):
            img = find_image(img_dir, id_)
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
        if names_file.is_file():
            self.class_names = read_class_names(names_file)
        elif self.mask_255 == "class":  # VOC's 21 classes never use 255: take the classes from the masks
            self.class_names = inferred_class_names(scan_labels(mask_dir)[0], "class")
        else:
            self.class_names = list(VOC_CLASSES)
        self.num_classes = len(self.class_names)
        self.palette = palette_for(self._masks[0])
        self._refuse_binary_0_255(mask_dir)

    def _add_sbd(self, sbd_root: Path, sets_dir: Path, img_dir: Path, sbd_splits: Sequence[str]) -> None:
        sbd = _resolve_sbd_root(sbd_root)
        val_file = sets_dir / "val.txt"
        if not val_file.is_file():
            raise DataError(f"adding SBD needs VOC's {val_file} (SBD images in VOC val are left out "
                            f"to keep val unseen); restore it")
        exclude = set(read_split(val_file)) | set(self.ids)
        # Fail now, not in a DataLoader worker.
        require("scipy.io", "adding SBD (MATLAB .mat masks; or train without --sbd)")
        for name in sbd_splits:
            split_file = sbd / f"{name}.txt"
            if not split_file.is_file():
                raise DataError(f"SBD split file {split_file} not found; found: {listing(sbd)}")
            for id_ in read_split(split_file):
                if id_ in exclude:
                    continue
                exclude.add(id_)
                img = find_image(img_dir, id_) or find_image(sbd / "img", id_)
                mask = sbd / "cls" / f"{id_}.mat"
                if img is None or not mask.is_file():
                    missing = mask if img is not None else sbd / "img" / f"{id_}.jpg"
                    raise DataError(f"SBD split file {split_file} lists id {id_!r} but {missing} is "
                                    f"missing; re-extract SBD")
                self.ids.append(id_)
                self._images.append(img)
                self._masks.append(mask)
