"""Image and label-mask files: reading them (every failure a clear DataError), writing palette PNGs.

numpy + Pillow only, never torch (the ONNX prediction path uses this module).

Every failure to read a file becomes a :class:`~fcnseg.errors.DataError` whose message
names the file and says what to do; Pillow's own exceptions and warnings never reach
the user. Masks hold *class indices*: they are read as palette indices ('P' mode) or
8-bit grayscale values ('L'), never by mapping RGB colours back to classes, so an RGB
mask is refused with instructions instead of being silently misread.

Label convention (:mod:`fcnseg.labels`): values ``0 .. num_classes-1`` are classes,
``255`` is "ignore" (PASCAL VOC's void / object borders).
"""
from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageOps

from fcnseg.errors import ConfigError, DataError
from fcnseg.labels import as_label_map, check_label_range
from fcnseg.optional import require
from fcnseg.outputs import atomic_save_image

# Largest image we decode: 2**27 pixels (~134 MP, e.g. 16384 x 8192). The declared size is
# checked from the header *before* any pixel is decoded, so a 100000 x 100000 PNG costs
# nothing. Pillow's own bomb check (warning above Image.MAX_IMAGE_PIXELS, error at twice
# that) is silenced/translated inside our reads only; its global settings are left alone.
# Raise this module attribute if you really have larger images.
MAX_PIXELS: int = 2**27

# Pillow's decoders and plugins report malformed input with all of these (PNG chunk
# errors are SyntaxError, truncated data OSError, bad headers struct.error/ValueError, ...).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError,
                  MemoryError, RuntimeError)

# Formats we let Pillow try. Leaving out formats without a magic number (TGA, ...) keeps a
# text or random file from being "decoded" as garbage pixels instead of being refused.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")  # JPEG covers MPO

_MASK_HOWTO = ("save class indices as a palette ('P') or 8-bit grayscale ('L') PNG, e.g. "
               "fcnseg.data.image_files.write_palette_png(labels, palette, path) or "
               "PIL.Image.fromarray(labels.astype(numpy.uint8)).save(path)")

T = TypeVar("T")


# Appended to "<what> file not found: PATH" by readers called for a dataset's files.
DATASET_HINT = "check the path and the dataset layout"


def _check_file(path: Path, what: str, not_found_hint: str | None = None) -> None:
    """Cheap checks before Pillow sees the file: it exists, is a file, is not empty."""
    if not path.exists():
        raise DataError(f"{what} file not found: {path}" + (f"; {not_found_hint}" if not_found_hint else ""))
    if not path.is_file():
        raise DataError(f"{what} path {path} is not a file (a directory?); point to an image file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    if size == 0:
        raise DataError(f"{what} file {path} is empty (0 bytes); re-export or re-download it")


def _decode(path: str | os.PathLike, what: str, fn: Callable[[Image.Image], T],
            not_found_hint: str | None = None) -> T:
    """Open ``path`` with Pillow and return ``fn(image)``; every failure becomes a DataError.

    ``what`` ("image" or "mask") goes into the messages; ``not_found_hint`` is the caller's
    advice for a missing file (datasets: :data:`DATASET_HINT`; a single photo: none).
    """
    path = Path(path)
    _check_file(path, what, not_found_hint)
    try:
        # Pillow warns about bombs (we check sizes ourselves), corrupt EXIF, palette
        # transparency...: inside a read these are either errors we report or harmless.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise _bomb_error(path, what, w, h)
                if w <= 0 or h <= 0:
                    raise DataError(f"{what} file {path} declares an empty size {w}x{h}; re-export it")
                return fn(im)
    except DataError:
        raise
    except Image.DecompressionBombError:
        # Raised by Image.open itself when the header declares > 2 * Image.MAX_IMAGE_PIXELS.
        raise DataError(f"{what} file {path} declares more than {MAX_PIXELS} pixels (a decompression "
                        f"bomb or a corrupt header); resize the image or check the file") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{what} file {path} is not an image Pillow can read (not one of "
                        f"{', '.join(IMAGE_FORMATS)}, or not an image at all); convert it to PNG "
                        f"or JPEG") from None
    except (PermissionError, IsADirectoryError, FileNotFoundError) as e:
        raise DataError(f"cannot read {what} file {path}: {e.strerror or e}; check the path "
                        f"and its permissions") from None
    except _DECODE_ERRORS as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DataError(f"{what} file {path} is truncated or corrupt ({detail}); "
                        f"re-download or re-export it") from None


def _bomb_error(path: Path, what: str, w: int, h: int) -> DataError:
    return DataError(
        f"{what} file {path} declares {w}x{h} pixels ({w * h / 1e6:.0f} MP), more than the "
        f"limit of {MAX_PIXELS / 1e6:.0f} MP (a decompression bomb or a corrupt header); "
        f"resize the image, or raise fcnseg.data.image_files.MAX_PIXELS if it is genuine")


def _exif_transpose(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (photos from phones are often stored rotated)."""
    try:
        return ImageOps.exif_transpose(im)
    except (SyntaxError, ValueError, TypeError, KeyError, struct.error):
        # A malformed EXIF block does not make the pixels unusable: keep them as stored.
        return im


def read_image(path: str | os.PathLike, *, not_found_hint: str | None = None) -> np.ndarray:
    """Read an image as RGB ``uint8`` of shape ``(H, W, 3)``.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted to
    RGB; the EXIF orientation tag is applied. Raises DataError (naming the file) for
    missing, empty, non-image, truncated, corrupt or oversized files.
    """
    def convert(im: Image.Image) -> np.ndarray:
        im = _exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # 16-bit photos: keep the top 8 bits (Pillow's RGB conversion would clip).
            a = np.asarray(im).astype(np.int64)
            a = (np.clip(a, 0, 65535) >> 8) if a.max(initial=0) > 255 else np.clip(a, 0, 255)
            return np.ascontiguousarray(np.repeat(a.astype(np.uint8)[..., None], 3, axis=2))
        if im.mode in ("P", "PA") and "transparency" in im.info:
            im = im.convert("RGBA")  # the documented way to drop palette transparency
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.array(im, dtype=np.uint8)  # (H, W, 3), writable; decoding happens here

    return _decode(path, "image", convert, not_found_hint)


def read_mask(path: str | os.PathLike, num_classes: int | None = None, *,
              not_found_hint: str | None = None) -> np.ndarray:
    """Read a label mask as ``uint8`` class indices of shape ``(H, W)``.

    Palette ('P') masks give their palette *indices*; grayscale ('L') masks their values;
    1-bit masks give 0/1. RGB(A), 16-bit, float and alpha masks are refused with a
    DataError explaining how to save indices. With ``num_classes``, every label must be
    in ``[0, num_classes)`` or 255 (ignore); offending values are listed with their count.
    """
    if num_classes is not None and not 1 <= int(num_classes) <= 255:
        raise ConfigError(f"num_classes must be in 1..255 for uint8 masks with 255 = ignore, "
                          f"got {num_classes}")

    def convert(im: Image.Image) -> np.ndarray:
        mode = im.mode
        if mode in ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
            raise DataError(f"mask {path} is an {mode} image (colours, not class indices); "
                            f"{_MASK_HOWTO}; colour masks convert with `fcnseg convert-masks "
                            f"{Path(path).parent} NEW_FOLDER --colors palette.txt|auto`")
        if mode.startswith("I;16") or mode == "I":
            raise DataError(f"mask {path} is a 16-bit image (mode {mode!r}); class indices must be "
                            f"8-bit: {_MASK_HOWTO}")
        if mode == "F":
            raise DataError(f"mask {path} is a 32-bit float image (mode 'F'); {_MASK_HOWTO}")
        if mode in ("LA", "La", "PA"):
            raise DataError(f"mask {path} has an alpha channel (mode {mode!r}); {_MASK_HOWTO}")
        if mode not in ("P", "L", "1"):
            raise DataError(f"mask {path} has unsupported mode {mode!r}; {_MASK_HOWTO}")
        im = _exif_transpose(im)
        if mode == "1":
            return np.array(im).astype(np.uint8)  # bool -> labels 0/1
        return np.array(im, dtype=np.uint8)  # 'P': palette indices, 'L': values; never RGB

    mask = _decode(path, "mask", convert, not_found_hint)
    if num_classes is not None:
        check_label_range(mask, num_classes, path)
    return mask


def read_palette(path: str | os.PathLike) -> list[tuple[int, int, int]] | None:
    """The colour palette of a 'P' mode PNG as ``(r, g, b)`` tuples, or None if it has none."""
    def get(im: Image.Image) -> list[tuple[int, int, int]] | None:
        if im.mode not in ("P", "PA"):
            return None
        flat = im.getpalette("RGB")
        if not flat:
            return None
        return [tuple(flat[i:i + 3]) for i in range(0, len(flat) - 2, 3)]  # type: ignore[misc]

    return _decode(path, "mask", get)


def read_sbd_mask(path: str | os.PathLike, num_classes: int | None = None) -> np.ndarray:
    """Read an SBD class mask (``cls/<id>.mat``, MATLAB ``GTcls.Segmentation``) as uint8 (H, W).

    Needs scipy (an optional dependency, imported only here).
    """
    path = Path(path)
    _check_file(path, "SBD mask")
    scipy_io = require("scipy.io", f"reading the SBD mask {path} (or train without --sbd)")
    try:
        mat = scipy_io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
        seg = np.asarray(mat["GTcls"][0, 0]["Segmentation"])
    except (KeyError, IndexError, ValueError, TypeError, OSError, NotImplementedError,
            struct.error, zlib.error, EOFError) as e:
        raise DataError(f"SBD mask {path} is not a readable GTcls .mat file ({type(e).__name__}: "
                        f"{str(e)[:200]}); re-download SBD") from None
    if seg.ndim != 2 or seg.size == 0 or seg.min(initial=0) < 0 or seg.max(initial=0) > 255:
        raise DataError(f"SBD mask {path}: GTcls.Segmentation is not a 2-D array of labels 0..255 "
                        f"(shape {seg.shape}); re-download SBD")
    mask = np.ascontiguousarray(seg.astype(np.uint8))
    if num_classes is not None:
        check_label_range(mask, num_classes, path)
    return mask


def default_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map: ``n`` colours from the bit-interleaving algorithm.

    Class ``i``'s bits are spread over R, G, B from the most significant bit down, so
    0 = black, 1 = (128, 0, 0), 2 = (0, 128, 0), ... and 255 (ignore) = (224, 224, 192).
    """
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


def flat_palette(palette: Sequence[Sequence[int]] | None) -> list[int]:
    """A 768-int Pillow palette: ``palette``'s colours, then VOC colours for the rest."""
    colours = [tuple(int(v) for v in c) for c in (palette or [])][:256]
    for c in colours:
        if len(c) != 3 or not all(0 <= v <= 255 for v in c):
            raise ValueError(f"palette entries must be (r, g, b) with values 0..255, got {c}")
    colours += default_palette(256)[len(colours):]
    return [v for c in colours for v in c]


def write_palette_png(labels: np.ndarray, palette: Sequence[Sequence[int]] | None,
                      path: str | os.PathLike) -> None:
    """Write ``labels`` (integer ``(H, W)`` in 0..255) as a 'P' mode PNG, atomically.

    ``palette`` is a list of ``(r, g, b)``; missing entries (e.g. 255) get VOC colours.
    Readers get the indices back exactly (:func:`read_mask`), viewers see colours.
    """
    labels = as_label_map(labels)
    # Build the 'P' image from the raw bytes: the indices are stored exactly as given.
    pim = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    pim.putpalette(flat_palette(palette))
    atomic_save_image(pim, path)
