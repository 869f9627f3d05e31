"""``fcnseg predict``: outputs, failures, overwrite protection; overlay/legend/panel pictures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fcnseg
from fcnseg.infer import visualize
from fcnseg.cli import main
from fcnseg.constants import IGNORE_INDEX
from fcnseg.data.image_files import default_palette, read_mask
from fcnseg.predict import collect_inputs, safe_name

from _predict_utils import (CLASS_NAMES, PALETTE, needs_pydensecrf, save_tiny_checkpoint, smooth_image,
                            write_image)


def _magma_levels() -> np.ndarray:
    """Lookup from a packed RGB colour (R << 16 | G << 8 | B) to its magma level 0..255 (-1: none)."""
    from matplotlib import colormaps

    lut = (colormaps["magma"](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.int64)
    table = np.full(1 << 24, -1, np.int16)
    table[(lut[:, 0] << 16) | (lut[:, 1] << 8) | lut[:, 2]] = np.arange(256)
    assert (table >= 0).sum() == 256  # 256 distinct colours: the decoding is unambiguous
    return table


MAGMA_LEVEL = _magma_levels()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("predict") / "tiny.pt")


@pytest.fixture
def inputs(tmp_path):
    """A folder with two odd-sized images, one more image elsewhere (for a glob)."""
    folder = tmp_path / "in"
    a = write_image(folder / "a.png", smooth_image(37, 53, seed=1))
    b = write_image(folder / "b.jpg", smooth_image(64, 41, seed=2))
    c = write_image(tmp_path / "more" / "c.png", smooth_image(20, 90, seed=3))
    return folder, a, b, c


def test_predict_writes_every_output(ckpt, inputs, tmp_path, capsys):
    folder, a, b, c = inputs
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for path in (a, b, c):
        h, w = np.asarray(Image.open(path)).shape[:2]
        gt = (np.arange(h * w).reshape(h, w) % 5).astype(np.uint8)
        gt[:2] = IGNORE_INDEX
        Image.fromarray(gt).save(gt_dir / f"{path.stem}.png")
    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", str(ckpt), str(folder), str(tmp_path / "more" / "*.png"),
               "--out", str(out), "--heatmaps", "--gt", str(gt_dir), "--alpha", "0.5"])
    assert rc == 0, capsys.readouterr().err
    model = fcnseg.load_model(ckpt)
    for path in (a, b, c):
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        expected = fcnseg.segment(model, image)
        # palette PNG: indices themselves, input size, the checkpoint's palette
        seg = Image.open(out / f"{path.stem}.png")
        assert seg.mode == "P" and seg.size == (w, h)
        np.testing.assert_array_equal(np.asarray(seg), expected)
        assert seg.getpalette()[:15] == [v for col in PALETTE for v in col]
        np.testing.assert_array_equal(read_mask(out / f"{path.stem}.png", 5), expected)
        # overlay: the blended photo, then a legend strip on the right
        ov = np.asarray(Image.open(out / f"{path.stem}_overlay.png"))
        assert ov.shape[0] >= h and ov.shape[1] > w
        np.testing.assert_array_equal(ov[:h, :w], visualize.blend(image, expected, PALETTE, 0.5))
        # heatmaps: one per class, input size, magma colours of round(255 * p); decoded through
        # matplotlib's colour table, each equals the API's probability to +-1/255 (8-bit storage)
        _, probs = fcnseg.segment(model, image, return_probs=True)
        for c, name in enumerate(CLASS_NAMES):
            hm = np.asarray(Image.open(out / f"{path.stem}_prob_{safe_name(name)}.png"))
            assert hm.shape == (h, w, 3)
            level = MAGMA_LEVEL[(hm[..., 0].astype(np.int64) << 16) | (hm[..., 1].astype(np.int64) << 8) | hm[..., 2]]
            assert (level >= 0).all()  # every pixel is a magma colour
            assert np.abs(level - probs[c] * 255).max() <= 1.0
        # panel: the errors cell marks exactly the labelled pixels where the prediction is wrong
        gt = np.asarray(Image.open(gt_dir / f"{path.stem}.png"))
        panel = np.asarray(Image.open(out / f"{path.stem}_panel.png").convert("RGB"))
        red = np.all(panel == (255, 0, 0), axis=2).sum()
        assert red == ((expected != gt) & (gt != IGNORE_INDEX)).sum() > 0
        np.testing.assert_array_equal(panel, np.asarray(visualize.error_panel(image, gt, expected, PALETTE,
                                                                              CLASS_NAMES)))
    assert (out / "a_prob_green_thing.png").is_file()  # names made file-safe
    assert "3 of 3 inputs done" in capsys.readouterr().out


def test_bad_files_are_reported_skipped_and_fail_the_run(ckpt, inputs, tmp_path, capsys):
    folder, a, b, _ = inputs
    (folder / "broken.png").write_bytes(b"this is not a png")
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", str(ckpt), str(folder), str(tmp_path / "missing.png"),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "2 of 5 inputs done, 3 failed" in err
    for name in ("broken.png", "empty.jpg", "missing.png"):
        assert name in err
    assert "not an image" in err and "empty" in err and "no such file" in err
    assert (out / "a.png").is_file() and (out / "b.png").is_file()  # good ones still done
    assert not (out / "broken.png").exists()


def test_refuses_non_empty_out_without_overwrite(ckpt, inputs, tmp_path, capsys):
    folder, a, _, _ = inputs
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"precious")
    rc = main(["predict", "--checkpoint", str(ckpt), str(a), "--out", str(out)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == b"precious"
    assert main(["predict", "--checkpoint", str(ckpt), str(a), "--out", str(out), "--overwrite"]) == 0
    assert Image.open(out / "a.png").mode == "P"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp


def test_cli_option_errors(ckpt, inputs, tmp_path, capsys):
    folder, a, _, _ = inputs
    base = ["predict", "--checkpoint", str(ckpt), str(a), "--out", str(tmp_path / "o")]
    assert main(base + ["--alpha", "1.5"]) == 2
    assert main(base + ["--tile", "abc"]) == 2
    assert main(base + ["--overlap", "10"]) == 2
    assert main(base + ["--runtime", "onnx"]) == 2
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "nothing*.png"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--alpha" in err and "--tile" in err and "fcnseg export" in err and "no input images" in err
    assert not (tmp_path / "o").exists()  # nothing created before the options were checked


def test_duplicate_stems_are_refused(ckpt, tmp_path, capsys):
    x1 = write_image(tmp_path / "d1" / "x.png", smooth_image(8, 8))
    x2 = write_image(tmp_path / "d2" / "x.jpg", smooth_image(8, 8))
    assert main(["predict", "--checkpoint", str(ckpt), str(x1), str(x2), "--out", str(tmp_path / "o")]) == 2
    assert "would both write x.png" in capsys.readouterr().err


def test_tile_option(ckpt, tmp_path):
    """--tile needs no optional package; the PNG holds the API's tiled labels."""
    path = write_image(tmp_path / "in" / "big.png", smooth_image(100, 130, seed=4))  # 3 x 4 tiles
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(path), "--out", str(out),
                 "--tile", "64", "--overlap", "16"]) == 0
    model = fcnseg.load_model(ckpt)
    image = np.asarray(Image.open(path).convert("RGB"))
    tiled = fcnseg.segment(model, image, tile=64, overlap=16)
    assert (tiled != fcnseg.segment(model, image)).any()  # tiling changes some labels here
    np.testing.assert_array_equal(np.asarray(Image.open(out / "big.png")), tiled)


@needs_pydensecrf
def test_tile_and_crf_options(ckpt, inputs, tmp_path):
    folder, a, b, _ = inputs
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(folder), "--out", str(out),
                 "--tile", "64", "--overlap", "16", "--crf"]) == 0
    model = fcnseg.load_model(ckpt)
    for path in (a, b):
        image = np.asarray(Image.open(path).convert("RGB"))
        refined = fcnseg.segment(model, image, tile=64, overlap=16, crf=True)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{path.stem}.png")), refined)


def test_collect_inputs_files_folders_globs(tmp_path):
    a = write_image(tmp_path / "a.png", smooth_image(4, 4))
    write_image(tmp_path / "sub" / "b.jpg", smooth_image(4, 4))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    files, failures = collect_inputs([str(tmp_path), str(a), str(tmp_path / "**" / "*.jpg"),
                                      str(tmp_path / "empty"), str(tmp_path / "nope.png")])
    assert [f.name for f in files] == ["a.png", "b.jpg"]  # folder not recursive; duplicates dropped
    assert [Path(n).name for n, _ in failures] == ["empty", "nope.png"]


def test_overlay_legend_shows_present_classes_only():
    image = smooth_image(40, 60)
    labels = np.zeros((40, 60), np.uint8)
    labels[:, 30:] = 3
    ov = np.asarray(visualize.overlay(image, labels, PALETTE, CLASS_NAMES, alpha=0.4))
    legend = ov[:, 60:].reshape(-1, 3)
    colours = {tuple(c) for c in legend}
    assert PALETTE[0] in colours and PALETTE[3] in colours
    assert PALETTE[1] not in colours and PALETTE[2] not in colours
    zero = np.asarray(visualize.overlay(image, labels, PALETTE, CLASS_NAMES, alpha=0.0))
    np.testing.assert_array_equal(zero[:40, :60], image)
    full = visualize.blend(image, labels, PALETTE, alpha=1.0)
    np.testing.assert_array_equal(full, np.array(PALETTE, np.uint8)[labels])


def test_error_panel_marks_wrong_and_ignored_pixels():
    image = smooth_image(20, 30)
    gt = np.zeros((20, 30), np.uint8)
    pred = gt.copy()
    pred[5:10, 5:10] = 2          # wrong
    gt[15:, :] = IGNORE_INDEX     # ignored
    panel = np.asarray(visualize.error_panel(image, gt, pred, None, CLASS_NAMES))
    # the errors cell is the 4th; find it from the right end of the picture body
    assert panel.shape[1] >= 4 * 30
    red = np.all(panel == (255, 0, 0), axis=2).sum()
    grey = np.all(panel == (128, 128, 128), axis=2).sum()
    assert red == 25 and grey >= 5 * 30
    assert visualize.full_palette(None)[255].tolist() == list(default_palette(256)[255])


def test_missing_or_mismatched_ground_truth_fails_that_file(ckpt, inputs, tmp_path, capsys):
    folder, a, b, _ = inputs
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(gt_dir / "a.png")  # wrong size; b.png missing
    rc = main(["predict", "--checkpoint", str(ckpt), str(folder), "--out", str(tmp_path / "o"),
               "--gt", str(gt_dir)])
    err = capsys.readouterr().err
    assert rc == 1 and "0 of 2 inputs done, 2 failed" in err
    assert "masks must match their images" in err and f"no ground truth {gt_dir / 'b.png'}" in err
