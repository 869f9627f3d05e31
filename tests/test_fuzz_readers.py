"""Reliability fuzz: >= 1000 generated bad inputs through read_image, read_mask and the datasets.

Every case must end in a DataError whose message names the file and describes the
problem (checked per category), or in a correct read (right shape/dtype, mask labels in
range); never another exception type, never a hang (each case runs under an alarm).
A seeded generator makes failures reproducible: the case number is in the assertion.
"""
from __future__ import annotations

import io as _io
import re
import signal
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_palette_mask
from fcnseg.data import image_files as io
from fcnseg.data.folder_pairs import FolderPairs
from fcnseg.data.voc import VOCSegmentation
from fcnseg.errors import DataError

NUM_CLASSES = 4
H, W = 24, 32

# What the message must say, per category (besides the file name).
ANY_DECODE = r"truncated or corrupt|not an image Pillow can read|is empty \(0 bytes\)|declares"
EXPECT = {
    "truncated": ANY_DECODE,
    "flip": ANY_DECODE + r"|outside \[0, 4\)|is an? \S+ image|16-bit|alpha channel|unsupported mode",
    "zero": r"is empty \(0 bytes\)",
    "notimage": r"not an image Pillow can read",
    "rgbmask": r"is an RGBA? image \(colours, not class indices\); save class indices as a palette",
    "mask16": r"is a 16-bit image \(mode 'I(;16)?'\)",
    "range": r"has labels outside \[0, 4\) and 255 \(ignore\): values \[[\d, ]+\] in \d+ pixels",
    "huge": r"declares (more than \d+|\d+x\d+) pixels",
    "mismatch": r"size mismatch: image .* is \d+x\d+ \(WxH\) but its mask .* is \d+x\d+",
    "missing": r"lists id '.*' but its (image|mask) .* is missing",
    "nomask": r"have no mask in .*\(matched by file stem\)",
}
MAY_DECODE = {"flip", "unicode"}  # a flipped byte can leave a decodable file


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so no reader's error handling can swallow it."""


@pytest.fixture
def alarm():
    def on_alarm(signum, frame):
        raise Hang("a single fuzz case took more than 30 s: a reader hangs")

    old = signal.signal(signal.SIGALRM, on_alarm)
    yield lambda: signal.setitimer(signal.ITIMER_REAL, 30.0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = _io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def base_files(rng: np.random.Generator) -> dict[str, bytes]:
    """Valid files to corrupt: an RGB JPEG and PNG, a palette mask, a grayscale mask."""
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([yy * 8, xx * 6, (yy + xx) * 4], -1) + rng.integers(0, 30, (H, W, 3))
    rgb = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    labels = ((yy // 6 + xx // 8) % NUM_CLASSES).astype(np.uint8)
    labels[::7, ::5] = 255
    pmask = Image.frombytes("P", (W, H), labels.tobytes())
    pmask.putpalette(io.flat_palette(None))
    return {
        "jpg": encode(rgb, "JPEG", quality=90),
        "png": encode(rgb, "PNG"),
        "pmask": encode(pmask, "PNG"),
        "lmask": encode(Image.fromarray(labels), "PNG"),
    }


def png_declaring(width: int, height: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """Patch the SOF0 marker of a baseline JPEG to declare another size."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[:i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]


class Runner:
    """Writes each case to its own uniquely named file, reads it, checks the outcome."""

    def __init__(self, root: Path, arm):
        self.root, self.arm = root, arm
        self.n = 0
        self.outcomes: dict[str, dict[str, int]] = {}

    def name(self, category: str, suffix: str, prefix: str = "case") -> str:
        self.n += 1
        return f"{prefix}{self.n:04d}_{category}.{suffix}"

    def record(self, category: str, outcome: str) -> None:
        self.outcomes.setdefault(category, {}).setdefault(outcome, 0)
        self.outcomes[category][outcome] += 1

    def expect_error(self, category: str, fn, *names: str) -> None:
        """``fn()`` must raise DataError naming every one of ``names`` and matching the category."""
        self.arm()
        try:
            fn()
        except DataError as e:
            msg = str(e)
            for n in names:
                assert n in msg, f"case {self.n} ({category}): {n!r} not in message: {msg}"
            assert re.search(EXPECT[category], msg), f"case {self.n} ({category}): {msg}"
            self.record(category, "error")
            return
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        raise AssertionError(f"case {self.n} ({category}): no DataError for {names}")

    def read(self, category: str, kind: str, data: bytes, suffix: str, prefix: str = "case",
             reference: np.ndarray | None = None) -> None:
        """Read ``data`` written to a new file; a decode is allowed only for categories in
        MAY_DECODE, or when it equals ``reference`` (a cut after the last pixel data)."""
        path = self.root / self.name(category, suffix, prefix)
        path.write_bytes(data)
        self.arm()
        try:
            out = io.read_image(path) if kind == "image" else io.read_mask(path, NUM_CLASSES)
        except DataError as e:
            msg = str(e)
            assert path.name in msg, f"case {self.n} ({category}): file name not in message: {msg}"
            pattern = EXPECT.get(category, EXPECT["flip"])
            assert re.search(pattern, msg), f"case {self.n} ({category}): unexpected message: {msg}"
            self.record(category, "error")
            return
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        assert out.dtype == np.uint8
        if reference is not None and out.shape == reference.shape and np.array_equal(out, reference):
            self.record(category, "ok")
            return
        assert category in MAY_DECODE, f"case {self.n} ({category}): {path.name} decoded without error"
        if kind == "image":
            assert out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous
        else:
            assert out.ndim == 2
            assert set(np.unique(out).tolist()) <= set(range(NUM_CLASSES)) | {255}
        self.record(category, "ok")


def test_fuzz_readers(tmp_path, alarm):
    start = time.perf_counter()
    rng = np.random.default_rng(20240601)
    base = base_files(rng)
    r = Runner(tmp_path, alarm)
    kinds = [("image", "jpg", "jpg"), ("image", "png", "png"), ("mask", "pmask", "png"), ("mask", "lmask", "png")]
    decoded = {}
    for kind, key, suffix in kinds:
        (tmp_path / f"ref_{key}.{suffix}").write_bytes(base[key])
        reader = io.read_image if kind == "image" else io.read_mask
        decoded[key] = reader(tmp_path / f"ref_{key}.{suffix}")

    # 1. truncation at random points (0 -> an empty file) -- 400 cases
    for i in range(400):
        kind, key, suffix = kinds[i % 4]
        data = base[key]
        cut = int(rng.integers(0, len(data) - 2))
        r.read("truncated" if cut else "zero", kind, data[:cut], suffix, reference=decoded[key])

    # 2. random byte flips (1-4 bytes; may still decode) -- 640 cases
    for i in range(640):
        kind, key, suffix = kinds[i % 4]
        data = bytearray(base[key])
        for _ in range(int(rng.integers(1, 5))):
            data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        r.read("flip", kind, bytes(data), suffix)

    # 3. zero-byte files and non-image files with image names -- 80 cases
    junk = [b"hello, not an image\n", b"<html><body>404</body></html>", b'{"a": 1}', b"\x00" * 100]
    for i in range(80):
        kind, _, suffix = kinds[i % 4]
        if i % 5 == 0:
            r.read("zero", kind, b"", suffix)
        else:
            data = junk[i % 4] if i % 2 else rng.bytes(int(rng.integers(1, 400)))
            r.read("notimage", kind, data, suffix)

    # 4. RGB / RGBA masks, 16-bit masks, labels out of range -- 200 cases
    for i in range(50):
        mode = "RGB" if i % 2 else "RGBA"
        arr = rng.integers(0, 256, (H, W, len(mode)), dtype=np.uint8)
        r.read("rgbmask", "mask", encode(Image.fromarray(arr, mode), "PNG"), "png")
    for i in range(50):
        arr = rng.integers(0, 2**16, (H, W)).astype(np.uint16)
        if i % 2:
            r.read("mask16", "mask", encode(Image.fromarray(arr), "PNG"), "png")
        else:
            r.read("mask16", "mask", encode(Image.fromarray(arr.astype(np.int32)), "TIFF"), "tif")
    for i in range(100):
        labels = rng.integers(0, NUM_CLASSES, (H, W)).astype(np.uint8)
        bad = rng.integers(NUM_CLASSES, 255, size=int(rng.integers(1, 6)))
        where = rng.choice(H * W, size=bad.size, replace=False)
        labels.flat[where] = bad
        path = tmp_path / r.name("range", "png")
        save_palette_mask(labels, path)
        values = ", ".join(str(v) for v in sorted(set(bad.tolist())))
        r.expect_error("range", lambda: io.read_mask(path, NUM_CLASSES),
                       path.name, f"values [{values}] in {bad.size} pixels")

    # 5. huge declared dimensions (PNG header with a valid CRC; patched JPEG SOF) -- 60 cases
    for i in range(60):
        if i % 2:
            w, h = int(rng.integers(12_000, 100_001)), int(rng.integers(12_000, 100_001))
            r.read("huge", ("image", "mask")[i % 4 == 1], png_declaring(w, h), "png")
        else:
            w, h = int(rng.integers(20_000, 65_536)), int(rng.integers(20_000, 65_536))
            r.read("huge", "image", jpeg_declaring(base["jpg"], w, h), "jpg")

    # 6. non-ASCII paths: valid files read, corrupt ones are reported by their name -- 60 cases
    letters = list("éüßøΩжд日本語한국어ñç") + ["ψυχή", "café", "🙂"]
    for i in range(60):
        kind, key, suffix = kinds[i % 4]
        prefix = "".join(rng.choice(letters, size=3)) + "_"
        data = base[key] if i % 3 else base[key][: len(base[key]) // 2]
        r.read("unicode" if i % 3 else "truncated", kind, data, suffix, prefix=prefix, reference=decoded[key])

    # 7. datasets: size mismatches, corrupt members, missing files, images without masks -- 130 cases
    voc = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    ids = []
    for i in range(60):
        id_ = f"ds{i:03d}_ünï"
        ih, iw = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        mh, mw = (ih, iw + int(rng.integers(1, 5))) if i % 2 else (ih + int(rng.integers(1, 5)), iw)
        Image.fromarray(rng.integers(0, 256, (ih, iw, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{id_}.jpg")
        save_palette_mask(rng.integers(0, NUM_CLASSES, (mh, mw)).astype(np.uint8),
                          voc / "SegmentationClass" / f"{id_}.png")
        ids.append(id_)
    corrupt = []
    for i in range(30):  # correct sizes but a corrupted image or mask inside the dataset
        id_ = f"bad{i:03d}"
        (voc / "JPEGImages" / f"{id_}.jpg").write_bytes(base["jpg"][: 200 + 7 * i] if i % 2 else base["jpg"])
        (voc / "SegmentationClass" / f"{id_}.png").write_bytes(base["pmask"] if i % 2 else base["pmask"][:90 + i])
        corrupt.append(id_)
    split = voc / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text("".join(f"{i}\n" for i in ids + corrupt))
    ds = VOCSegmentation(voc, "train")
    ds.class_names, ds.num_classes = ["a", "b", "c", "d"], NUM_CLASSES
    for i in range(len(ids)):
        r.n += 1
        r.expect_error("mismatch", lambda: ds[i], ds.image_path(i).name, ds.mask_path(i).name)
    for k in range(len(corrupt)):
        i = len(ids) + k
        r.n += 1
        bad_name = ds.image_path(i).name if k % 2 else ds.mask_path(i).name
        r.expect_error("truncated", lambda: ds[i], bad_name)
    for i in range(30):  # split files listing ids whose image or mask is missing
        ghost = f"ghost{i:03d}_é"
        if i % 2:  # image present, mask missing
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(voc / "JPEGImages" / f"{ghost}.jpg")
            missing = f"{ghost}.png"
        else:
            missing = f"{ghost}.jpg"
        split.write_text("".join(f"{x}\n" for x in ids[:i] + [ghost] + ids[i:]))
        r.n += 1
        r.expect_error("missing", lambda: VOCSegmentation(voc, "train"), split.name, ghost, missing)
    for i in range(10):  # folder pairs with images lacking masks
        root = tmp_path / f"pairs{i}"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        lonely = f"lonely{i}_ñ.png"
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / lonely)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "paired.png")
        save_palette_mask(np.zeros((4, 4), np.uint8), root / "masks" / "paired.png")
        r.n += 1
        r.expect_error("nomask", lambda: FolderPairs(root), lonely)

    total = sum(sum(v.values()) for v in r.outcomes.values())
    elapsed = time.perf_counter() - start
    assert total >= 1000, r.outcomes
    assert r.outcomes["flip"].get("error", 0) > 50  # flips really exercise the error paths
    assert r.outcomes["unicode"]["ok"] == 40
    print(f"fuzz: {total} cases in {elapsed:.1f} s")  # speed is reported, never asserted
