"""``fcnseg convert-masks``: RGB colour masks -> class-index palette PNGs.

fcnseg reads masks as class indices (palette or grayscale PNGs, :func:`fcnseg.data.image_files.read_mask`)
and refuses colour masks rather than guess. This command turns colour masks into index
masks, once, with a colour table the user can see:

- ``--colors palette.txt``: line *i* is class *i*: ``r g b [name]`` or ``#rrggbb [name]``
  (blank lines and lines starting with ``# `` or ``//`` are skipped). A line named
  ``ignore`` maps its colour to 255 (ignored in training) and takes no class index.
- ``--colors auto``: the colours present in SRC, sorted by (r, g, b) (so black, usually the
  background, is class 0), numbered from 0; the table used is written to ``DST/palette.txt``.

A colour not in the table is an error listing each such colour with its pixel count and the
first file holding it (nothing is written), or with ``--unknown ignore`` becomes 255.
Outputs keep SRC's sub-folders and file stems (``.png``), carry the colours as their PNG
palette (viewers show the same picture), are written atomically, and never replace existing
files without ``--overwrite``. When the table names its classes and DST is a dataset's
``masks/`` or ``SegmentationClass/`` folder, the names go to ``class_names.txt`` beside it.

Torch-free.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from fcnseg.constants import IGNORE_INDEX, IMAGE_SUFFIXES
from fcnseg.data import image_files
from fcnseg.errors import ConfigError, DataError
from fcnseg.outputs import atomic_write_text

SUFFIXES = IMAGE_SUFFIXES  # colour masks are images (JPEG ones too: refused below as not flat colours)
UNKNOWN = ("error", "ignore")
MAX_CLASSES = 255  # index 255 is "ignore"
_HEX = re.compile(r"#?([0-9a-fA-F]{6})")


@dataclass
class Palette:
    """Colour table: ``colors[i]`` is class i's (r, g, b); ``ignore`` colours map to 255."""

    colors: list[tuple[int, int, int]]
    names: list[str | None]
    ignore: list[tuple[int, int, int]] = field(default_factory=list)

    def lookup(self) -> dict[int, int]:
        """Packed colour ``r << 16 | g << 8 | b`` -> index (0..N-1, or 255)."""
        table = {_pack(c): i for i, c in enumerate(self.colors)}
        table.update({_pack(c): IGNORE_INDEX for c in self.ignore})
        return table

    def png_palette(self) -> list[tuple[int, int, int]]:
        """256 colours for the output PNGs: the classes', then VOC colours; 255 = the ignore colour."""
        pal = list(self.colors) + image_files.default_palette(256)[len(self.colors):]
        if self.ignore:
            pal[IGNORE_INDEX] = self.ignore[0]
        return pal


def _pack(c: Iterable[int]) -> int:
    r, g, b = (int(v) for v in c)
    return (r << 16) | (g << 8) | b


def _unpack(key: int) -> tuple[int, int, int]:
    return (key >> 16) & 255, (key >> 8) & 255, key & 255


def _hex(key: int) -> str:
    return "#%02x%02x%02x" % _unpack(key)


def read_palette_file(path: str | os.PathLike) -> Palette:
    """Parse a colour table (``r g b [name]`` or ``#rrggbb [name]`` per line; see the module doc)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read colour table {path}: {e}; it must be UTF-8 text with one "
                        f"'r g b [name]' or '#rrggbb [name]' per line") from None
    pal = Palette([], [])
    seen: dict[int, int] = {}
    for no, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("//") or (text.startswith("#") and not _HEX.match(text.split()[0])):
            continue
        parts = text.split()
        m = _HEX.fullmatch(parts[0])
        try:
            if m:
                color = tuple(int(m.group(1)[i:i + 2], 16) for i in (0, 2, 4))
                name_parts = parts[1:]
            else:
                color = tuple(int(v) for v in parts[:3])
                name_parts = parts[3:]
                if len(color) != 3 or not all(0 <= v <= 255 for v in color):
                    raise ValueError
        except ValueError:
            raise DataError(f"colour table {path}, line {no}: {text!r} is not 'r g b [name]' (0..255 each) or "
                            f"'#rrggbb [name]'") from None
        key = _pack(color)
        if key in seen:
            raise DataError(f"colour table {path}, line {no}: colour {_hex(key)} already given on line "
                            f"{seen[key]}; each colour must map to one class")
        seen[key] = no
        name = " ".join(name_parts) or None
        if name is not None and name.lower() == "ignore":
            pal.ignore.append(color)  # type: ignore[arg-type]
            continue
        pal.colors.append(color)  # type: ignore[arg-type]
        pal.names.append(name)
    if not pal.colors:
        raise DataError(f"colour table {path} lists no class colours; write one 'r g b [name]' or "
                        f"'#rrggbb [name]' per line (line i = class i)")
    if len(pal.colors) > MAX_CLASSES:
        raise DataError(f"colour table {path} lists {len(pal.colors)} classes; at most {MAX_CLASSES} fit "
                        f"uint8 masks with 255 = ignore")
    return pal


def _read_rgb_keys(path: Path) -> np.ndarray:
    """The mask's pixels as packed colours, uint32 (H, W)."""
    rgb = image_files.read_image(path).astype(np.uint32)  # (H, W, 3); DataError for unreadable files
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def list_sources(src: Path) -> list[Path]:
    """Mask files under ``src`` (recursively, sorted), or ``[src]`` for a file."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DataError(f"convert-masks: {src} does not exist; pass a folder of colour masks (or one file)")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(src).parts))
    if not files:
        raise DataError(f"convert-masks: no mask images ({', '.join(SUFFIXES)}) found in {src}")
    return files


def convert_masks(src: str | os.PathLike, dst: str | os.PathLike, colors: str = "auto", *,
                  unknown: str = "error", overwrite: bool = False) -> dict:
    """Convert the colour masks in ``src`` to index PNGs in ``dst``; return a summary dict.

    ``colors``: a colour-table path or ``"auto"``; ``unknown``: ``"error"`` or ``"ignore"``
    (unknown colours -> 255). Raises DataError / ConfigError before writing anything when the
    inputs or the destination are not right.
    """
    if unknown not in UNKNOWN:
        raise ConfigError(f"--unknown {unknown!r}: choose error or ignore")
    src_, dst_ = Path(src), Path(dst)
    files = list_sources(src_)
    base = src_ if src_.is_dir() else src_.parent
    if dst_.resolve() == base.resolve() or base.resolve() in dst_.resolve().parents:
        raise ConfigError(f"convert-masks: DST {dst_} is inside SRC {src_}; write the index masks to another "
                          f"folder (the colour masks are kept)")
    outputs = [dst_ / p.relative_to(base).with_suffix(".png") for p in files]
    clash = len(set(outputs)) != len(outputs)
    if clash:
        dup = sorted({str(o) for o in outputs if outputs.count(o) > 1})
        raise DataError(f"convert-masks: several files in {src_} would become {dup[0]} (same stem, different "
                        f"suffixes); keep one of each")
    palette = read_palette_file(colors) if colors != "auto" else None
    extra = []  # files besides the masks
    if palette is None:
        extra.append(dst_ / "palette.txt")
    names_file = None
    if palette is not None and any(palette.names) and dst_.name in ("masks", "SegmentationClass"):
        names_file = dst_.parent / "class_names.txt"
        extra.append(names_file)
    existing = [p for p in outputs + extra if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise ConfigError(f"convert-masks: {len(existing)} output file(s) already exist ({shown}); pass "
                          f"--overwrite to replace them, or choose another DST")

    # Pass 1: every colour with its pixel count and first file (nothing written yet).
    counts: dict[int, int] = {}
    first: dict[int, Path] = {}
    for path in files:
        keys, n = np.unique(_read_rgb_keys(path), return_counts=True)
        for k, c in zip(keys.tolist(), n.tolist()):
            counts[k] = counts.get(k, 0) + c
            first.setdefault(k, path)
    if palette is None:
        if len(counts) > MAX_CLASSES:
            top = sorted(counts, key=lambda k: -counts[k])[:5]
            raise DataError(f"convert-masks: {len(counts)} different colours in {src_} (most common: "
                            f"{', '.join(_hex(k) for k in top)}): more than {MAX_CLASSES} classes, so these are "
                            f"not flat label colours (JPEG compression or smoothing blends them); export the "
                            f"masks as PNG without smoothing, or pass --colors palette.txt --unknown ignore")
        palette = Palette([_unpack(k) for k in sorted(counts)], [None] * len(counts))
    table = palette.lookup()
    missing = sorted((k for k in counts if k not in table), key=lambda k: -counts[k])
    if missing and unknown == "error":
        shown = "; ".join(f"{_hex(k)} = rgb{_unpack(k)}: {counts[k]} px, first in {first[k]}" for k in missing[:10])
        raise DataError(f"convert-masks: {len(missing)} colour(s) in {src_} are not in {colors}: {shown}"
                        f"{'; ...' if len(missing) > 10 else ''}. Add them to the colour table, or pass "
                        f"--unknown ignore to label them 255 (ignore)")

    # Pass 2: write. Colours -> indices through the image's own unique colours (a small lookup).
    pal_png = palette.png_palette()
    for path, out in zip(files, outputs):
        keys = _read_rgb_keys(path)
        uniq, inverse = np.unique(keys, return_inverse=True)
        index = np.array([table.get(k, IGNORE_INDEX) for k in uniq.tolist()], dtype=np.uint8)
        image_files.write_palette_png(index[inverse].reshape(keys.shape), pal_png, out)  # atomic
    written = []
    if colors == "auto":
        lines = ["# fcnseg convert-masks --colors auto: line i = class i (r g b name); edit the names, "
                 "or reuse with --colors"]
        lines += [f"{r} {g} {b} class_{i}" for i, (r, g, b) in enumerate(palette.colors)]
        atomic_write_text(dst_ / "palette.txt", "\n".join(lines) + "\n")
        written.append(dst_ / "palette.txt")
    if names_file is not None:
        atomic_write_text(names_file, "".join(f"{n or f'class_{i}'}\n" for i, n in enumerate(palette.names)))
        written.append(names_file)
    return {"files": len(files), "classes": len(palette.colors), "unknown_colors": len(missing),
            "unknown_pixels": int(sum(counts[k] for k in missing)), "dst": str(dst_),
            "written": [str(p) for p in written],
            "class_names_hint": any(palette.names) and names_file is None}


# ----------------------------------------------------------------------------- CLI

def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Convert RGB colour masks to class-index palette PNGs (what fcnseg reads). Line i of the "
                     "colour table is class i: 'r g b [name]' or '#rrggbb [name]'; a colour named 'ignore' "
                     "becomes 255.")
    p.add_argument("src", metavar="SRC", help="folder of colour masks (searched recursively), or one file")
    p.add_argument("dst", metavar="DST", help="output folder (sub-folders and file stems kept, .png)")
    p.add_argument("--colors", required=True, metavar="palette.txt|auto",
                   help="colour table file, or auto: the colours present, sorted by (r, g, b), written to "
                        "DST/palette.txt")
    p.add_argument("--unknown", choices=UNKNOWN, default="error",
                   help="a colour not in the table: error (default: list them, write nothing) or ignore (-> 255)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in DST")


def cli_main(args: argparse.Namespace) -> int:
    if args.colors != "auto" and not Path(args.colors).is_file():
        raise ConfigError(f"--colors {args.colors}: no such file; pass a colour table or auto")
    s = convert_masks(args.src, args.dst, args.colors, unknown=args.unknown, overwrite=args.overwrite)
    unknown = (f"; {s['unknown_pixels']} pixels of {s['unknown_colors']} unknown colour(s) set to 255 (ignore)"
               if s["unknown_colors"] else "")
    print(f"converted {s['files']} mask(s) to {s['dst']}: {s['classes']} classes{unknown}")
    for path in s["written"]:
        print(f"  wrote {path}")
    if s["class_names_hint"]:
        print(f"  the colour table names the classes: copy the names (line i = class i) into the dataset's "
              f"class_names.txt")
    return 0
