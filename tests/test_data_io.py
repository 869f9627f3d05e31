"""fcnseg.data.image_files: image/mask reading, refusals with clear messages, palettes."""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.data import image_files as io
from fcnseg.errors import ConfigError, DataError


def png_header_only(path: Path, width: int, height: int, mode_byte: int = 0) -> Path:
    """A PNG whose IHDR (valid CRC) declares ``width x height`` but holds no pixel data."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode_byte, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- read_image

def test_read_image_rgb_roundtrip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    out = io.read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, a)
    assert out.flags.writeable and out.flags.c_contiguous


def test_read_image_converts_modes(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "l.png")  # mode L
    np.testing.assert_array_equal(io.read_image(tmp_path / "l.png"), np.repeat(gray[..., None], 3, 2))

    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10  # alpha is dropped, colour kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgba.png")[0, 0], [200, 0, 0])

    p = Image.frombytes("P", (4, 3), bytes([1] * 12))
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(io.read_image(tmp_path / "p.png")[2, 3], [10, 20, 30])

    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    out = io.read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (3, 4, 3)
    assert out[1, 1, 0] > 200 and out[1, 1, 1] < 60 and out[1, 1, 2] < 60


def test_read_image_16bit_keeps_top_bits(tmp_path):
    a = np.array([[0, 256, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    out = io.read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 255])


def test_read_image_applies_exif_orientation(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = io.read_image(tmp_path / "rot.jpg")
    assert out.shape == (40, 20, 3)  # displayed orientation
    assert out[5, 10].mean() > 200 and out[35, 10].mean() < 50  # left half -> top half


def test_non_ascii_paths(tmp_path):
    d = tmp_path / "données_日本"
    d.mkdir()
    Image.fromarray(np.full((3, 4, 3), 7, np.uint8)).save(d / "ïmage_ü.png")
    io.write_palette_png(np.ones((3, 4), np.uint8), None, d / "máscara.png")
    assert io.read_image(d / "ïmage_ü.png")[0, 0, 0] == 7
    assert io.read_mask(d / "máscara.png", 2).sum() == 12
    (d / "trunc_é.png").write_bytes((d / "ïmage_ü.png").read_bytes()[:30])
    with pytest.raises(DataError, match="trunc_é.png"):
        io.read_image(d / "trunc_é.png")


# ----------------------------------------------------------------------------- read_mask

def test_read_mask_uses_palette_indices_not_colours(tmp_path):
    labels = np.array([[0, 1, 2], [255, 2, 1]], np.uint8)
    pal = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (256 * 3 - 9)
    io.write_palette_png(labels, [tuple(pal[i:i + 3]) for i in range(0, 768, 3)], tmp_path / "m.png")
    out = io.read_mask(tmp_path / "m.png", num_classes=3)
    assert out.dtype == np.uint8 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, labels)


def test_read_mask_grayscale_and_1bit(tmp_path):
    Image.fromarray(np.array([[0, 4], [255, 1]], np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(io.read_mask(tmp_path / "l.png", 5), [[0, 4], [255, 1]])
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "b.png")  # mode '1'
    np.testing.assert_array_equal(io.read_mask(tmp_path / "b.png", 2), [[1, 0]])


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_read_mask_refuses_colour_masks(tmp_path, mode):
    Image.new(mode, (4, 3)).save(tmp_path / "colour.png")
    with pytest.raises(DataError) as e:
        io.read_mask(tmp_path / "colour.png", 21)
    msg = str(e.value)
    assert f"mask {tmp_path / 'colour.png'} is an {mode} image" in msg
    assert "palette ('P')" in msg and "8-bit grayscale" in msg and "write_palette_png" in msg


@pytest.mark.parametrize("dtype,suffix,mode", [(np.uint16, "png", "I;16"), (np.int32, "tif", "I")])
def test_read_mask_refuses_16bit(tmp_path, dtype, suffix, mode):
    Image.fromarray(np.array([[1, 300]], dtype=dtype)).save(tmp_path / f"m16.{suffix}")
    with pytest.raises(DataError) as e:
        io.read_mask(tmp_path / f"m16.{suffix}", 3)
    assert f"m16.{suffix} is a 16-bit image (mode {mode!r})" in str(e.value)
    assert "8-bit" in str(e.value)


def test_read_mask_refuses_alpha_and_float(tmp_path):
    Image.new("LA", (4, 3)).save(tmp_path / "la.png")
    with pytest.raises(DataError, match=r"la\.png has an alpha channel \(mode 'LA'\)"):
        io.read_mask(tmp_path / "la.png")
    Image.fromarray(np.zeros((3, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f\.tif is a 32-bit float image"):
        io.read_mask(tmp_path / "f.tif")


def test_read_mask_labels_out_of_range_listed_with_count(tmp_path):
    labels = np.array([[0, 1, 7], [9, 9, 255]], np.uint8)
    io.write_palette_png(labels, None, tmp_path / "bad.png")
    with pytest.raises(DataError) as e:
        io.read_mask(tmp_path / "bad.png", num_classes=3)
    msg = str(e.value)
    assert "bad.png" in msg and "outside [0, 3)" in msg
    assert "values [7, 9] in 3 pixels" in msg
    # 255 alone is fine, and without num_classes nothing is checked.
    np.testing.assert_array_equal(io.read_mask(tmp_path / "bad.png"), labels)
    with pytest.raises(ConfigError):
        io.read_mask(tmp_path / "bad.png", num_classes=0)


# ----------------------------------------------------------------------------- failures

def test_missing_empty_notimage_dir(tmp_path):
    with pytest.raises(DataError, match=r"image file not found: .*nope\.jpg"):
        io.read_image(tmp_path / "nope.jpg")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"mask file .*zero\.png is empty \(0 bytes\)"):
        io.read_mask(tmp_path / "zero.png")
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG")
    with pytest.raises(DataError, match=r"text\.jpg is not an image Pillow can read"):
        io.read_image(tmp_path / "text.jpg")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(DataError, match=r"folder\.png is not a file"):
        io.read_image(tmp_path / "folder.png")


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_files(tmp_path, fmt):
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / f"full.{fmt}")
    data = (tmp_path / f"full.{fmt}").read_bytes()
    (tmp_path / f"cut.{fmt}").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"cut\.{fmt} is truncated or corrupt .*re-download or re-export"):
        io.read_image(tmp_path / f"cut.{fmt}")


def test_decompression_bomb_refused_from_header(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(DataError, match=r"bomb\.png declares more than .* pixels \(a decompression bomb"):
        io.read_image(tmp_path / "bomb.png")
    # Between Pillow's warning and error thresholds our own header check answers.
    png_header_only(tmp_path / "big.png", 12_000, 12_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning may escape
        with pytest.raises(DataError, match=r"big\.png declares 12000x12000 pixels \(144 MP\)"):
            io.read_mask(tmp_path / "big.png")
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global state is untouched


def test_max_pixels_is_configurable(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(io, "MAX_PIXELS", 100)
    with pytest.raises(DataError, match=r"small\.png declares 20x20 pixels"):
        io.read_image(tmp_path / "small.png")


# ----------------------------------------------------------------------------- palettes

def test_default_palette_is_voc_colour_map():
    pal = io.default_palette()
    assert len(pal) == 256
    assert pal[0] == (0, 0, 0) and pal[1] == (128, 0, 0) and pal[2] == (0, 128, 0)
    assert pal[3] == (128, 128, 0) and pal[15] == (192, 128, 128)  # person
    assert pal[20] == (0, 64, 128)  # tvmonitor
    assert pal[255] == (224, 224, 192)  # VOC's void colour
    assert io.default_palette(4) == pal[:4]


def test_write_palette_png_roundtrip(tmp_path):
    labels = np.array([[0, 1], [2, 255]], np.uint8)
    io.write_palette_png(labels, [(1, 2, 3), (4, 5, 6)], tmp_path / "out.png")
    im = Image.open(tmp_path / "out.png")
    assert im.mode == "P"
    np.testing.assert_array_equal(np.asarray(im), labels)
    pal = io.read_palette(tmp_path / "out.png")
    assert pal[:2] == [(1, 2, 3), (4, 5, 6)]
    assert pal[2] == (0, 128, 0) and pal[255] == (224, 224, 192)  # rest from VOC
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        io.write_palette_png(np.zeros((2, 2, 3)), None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="0..255"):
        io.write_palette_png(np.array([[300]]), None, tmp_path / "x.png")
    Image.fromarray(labels).save(tmp_path / "gray.png")
    assert io.read_palette(tmp_path / "gray.png") is None


def test_read_sbd_mask(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    seg = np.array([[0, 15], [15, 255]], np.uint8)
    scipy_io.savemat(tmp_path / "a.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1)}})
    np.testing.assert_array_equal(io.read_sbd_mask(tmp_path / "a.mat", 21), seg)
    with pytest.raises(DataError, match=r"a\.mat has labels outside \[0, 10\).*values \[15\] in 2 pixels"):
        io.read_sbd_mask(tmp_path / "a.mat", 10)
    scipy_io.savemat(tmp_path / "b.mat", {"other": np.zeros(3)})
    with pytest.raises(DataError, match=r"b\.mat is not a readable GTcls \.mat file"):
        io.read_sbd_mask(tmp_path / "b.mat")
    (tmp_path / "c.mat").write_bytes(b"garbage" * 20)
    with pytest.raises(DataError, match=r"c\.mat is not a readable GTcls"):
        io.read_sbd_mask(tmp_path / "c.mat")


def test_read_sbd_mask_without_scipy(tmp_path, monkeypatch):
    import sys

    (tmp_path / "a.mat").write_bytes(b"x")
    from fcnseg.optional import MissingDependencyError

    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `import scipy.io` fail
    with pytest.raises(MissingDependencyError, match=r"a\.mat .*needs the optional package scipy.*"
                                                     r"pip install 'fcnseg\[sbd\]'"):
        io.read_sbd_mask(tmp_path / "a.mat")
