"""Issue #9 points 2, 3, 4, 9 and 14: a new user's own data, through the commands they run.

0/255 binary masks (refused, then ``--mask-255 class``), a plain ``images/`` + ``masks/``
folder (``--val-fraction``), RGB colour masks (``fcnseg convert-masks``), fine-tuning on
another label set (``--init`` with another class count), masks without images (a warning).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _engine_utils import TINY_ARGS, random_head_checkpoint, read_jsonl, torch_one_thread  # noqa: F401
from conftest import random_pair, save_palette_mask, write_voc
from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.data import image_files
from fcnseg.data.datasets import open_dataset
from fcnseg.data.folder_pairs import FolderPairs
from fcnseg.data.synthetic import make_synthetic_voc
from fcnseg.errors import DataError, DataWarning
from fcnseg.models import build_model
from fcnseg.models.geometry import bilinear_kernel


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``fcnseg <argv>`` in this process: (exit code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def write_pairs(root: Path, n: int, *, seed: int = 0, num_classes: int = 3, binary: bool = False,
                sub: str = "", h: int = 32, w: int = 48) -> list[str]:
    """``n`` image/mask pairs under ``root/images[/sub]`` + ``root/masks[/sub]``; returns the stems.

    ``binary``: masks are 0/255 grayscale PNGs (foreground = 255), as annotation tools export them.
    """
    rng = np.random.default_rng(seed)
    stems = []
    for i in range(n):
        image, mask = random_pair(rng, h, w, 2 if binary else num_classes)
        stem = f"{sub or 'img'}{i:02d}"
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / sub / f"{stem}.jpg", quality=95)
        if binary:
            (root / "masks" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray((mask * 255).astype(np.uint8), mode="L").save(root / "masks" / sub / f"{stem}.png")
        else:
            save_palette_mask(mask, root / "masks" / sub / f"{stem}.png")
        stems.append(stem)
    return stems


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fcnseg "), err  # one line, no traceback
    return lines[0]


# ----------------------------------------------------------------------------- 2. binary 0/255 masks

@pytest.fixture
def binary_folder(tmp_path) -> Path:
    root = tmp_path / "binary"
    write_pairs(root, 6, binary=True, sub="train")
    write_pairs(root, 3, binary=True, sub="val", seed=1)
    return root


def test_binary_masks_are_refused_then_train_two_classes_with_mask_255_class(binary_folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run(capsys, "train", "--data", binary_folder, "--out", out, *TINY_ARGS, "--epochs", "1")
    line = one_error_line(err)
    assert rc == 2 and "only the values 0 and 255" in line and "--mask-255 class" in line
    assert str(binary_folder / "masks") in line and "train00.png" in line  # names the folder and files
    assert not list(out.glob("*.pt"))

    rc, stdout, err = run(capsys, "train", "--data", binary_folder, "--out", out, *TINY_ARGS, "--epochs", "2",
                          "--mask-255", "class")
    assert rc == 0, err
    assert "2 classes" in stdout
    doc = json.loads((out / "config.json").read_text())
    assert doc["resolved"]["num_classes"] == 2 and doc["resolved"]["class_names"] == ["background", "foreground"]
    assert doc["config"]["mask_255"] == "class"
    val = read_jsonl(out / "metrics.jsonl")[-1]["val"]
    # Both classes are scored: the foreground (255 in the files) is a class now, not ignored.
    assert len(val["iou"]) == 2 and all(math.isfinite(v) for v in val["iou"])
    assert val["miou"] < 0.99  # a 2-step model on random masks: far from the trivial 100%
    ds = open_dataset(binary_folder, "val", mask_255="class")  # the same through the Python API
    stored = np.asarray(Image.open(ds.mask_path(0)))
    assert set(np.unique(stored)) == {0, 255}
    np.testing.assert_array_equal(ds.read_mask(0), (stored == 255).astype(np.uint8))

    # eval takes the meaning of 255 from the checkpoint; a contradicting flag is refused
    rc, stdout, err = run(capsys, "eval", "--checkpoint", out / "best.pt", "--data", binary_folder, "--workers", "0",
                          "--device", "cpu", "--amp", "off", "--json")
    assert rc == 0, err
    assert json.loads(stdout)["class_names"] == ["background", "foreground"]
    rc, _, err = run(capsys, "eval", "--checkpoint", out / "best.pt", "--data", binary_folder, "--workers", "0",
                     "--device", "cpu", "--mask-255", "ignore")
    assert rc == 2 and "has 2 classes but the data has 1" in one_error_line(err)


def test_binary_masks_with_255_as_ignore_are_a_single_class_and_refused(binary_folder, tmp_path, capsys):
    rc, _, err = run(capsys, "train", "--data", binary_folder, "--out", tmp_path / "r", *TINY_ARGS,
                     "--mask-255", "ignore")
    line = one_error_line(err)
    assert rc == 2 and "single class ('class_0')" in line and "nothing to learn" in line


def test_a_refused_start_leaves_no_split_files(tmp_path, capsys):
    root = tmp_path / "bin"
    write_pairs(root, 4, binary=True)
    out = tmp_path / "run"
    rc, _, err = run(capsys, "train", "--data", root, "--out", out, *TINY_ARGS, "--val-fraction", "0.5")
    assert rc == 2 and "only the values 0 and 255" in err
    assert list(out.iterdir()) == []  # so the corrected command needs no --overwrite
    rc, _, err = run(capsys, "train", "--data", root, "--out", out, *TINY_ARGS, "--val-fraction", "0.5",
                     "--mask-255", "class", "--iters", "1")
    assert rc == 0, err
    assert len((out / "val.txt").read_text().split()) == 2


def test_voc_masks_keep_255_as_ignore_without_a_flag(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        image, mask = random_pair(rng, 24, 32, 3)
        mask[:2] = 255  # VOC-style void band
        items.append((f"a{i}", image, mask))
    items[0][2][:] = np.where(items[0][2] == 255, 255, 0)  # the first mask alone is 0/255 only
    root = write_voc(tmp_path / "voc", {"train": items})
    ds = open_dataset(root, "train")
    assert ds.num_classes == 21 and ds.mask_255 is None
    assert 255 in ds.read_mask(0) and ds[0][1].max() == 255  # still ignore, no mapping

    binary = [(f"b{i}", image, np.where(mask > 0, 255, 0).astype(np.uint8)) for i, (_, image, mask) in enumerate(items)]
    root = write_voc(tmp_path / "vocbin", {"train": binary}, class_names=["background", "road"])
    with pytest.raises(DataError, match=r"only the values 0 and 255 \(3 masks read, e\.g\. b0\.png"):
        open_dataset(root, "train")
    ds = open_dataset(root, "train", mask_255="class")
    np.testing.assert_array_equal(ds.read_mask(1), (binary[1][2] == 255).astype(np.uint8))
    assert open_dataset(root, "train", mask_255="ignore").read_mask(1).max() == 255


# ----------------------------------------------------------------------------- 3. plain folder, --val-fraction

def test_plain_folder_trains_with_val_fraction_and_resumes_on_the_same_split(tmp_path, capsys):
    root = tmp_path / "plain"
    stems = write_pairs(root, 8)
    out = tmp_path / "run"
    rc, _, err = run(capsys, "train", "--data", root, "--out", out, *TINY_ARGS)
    line = one_error_line(err)
    assert rc == 2 and "has no split 'train'" in line and "--val-fraction 0.1" in line

    rc, stdout, err = run(capsys, "train", "--data", root, "--out", out, *TINY_ARGS, "--epochs", "1",
                          "--val-fraction", "0.25", "--seed", "3")
    assert rc == 0, err
    # The split: a seeded shuffle (seed 3) of the sorted stems, round(0.25 * 8) = 2 held out.
    order = np.random.default_rng(3).permutation(8)
    want_val = sorted(stems[i] for i in order[:2])
    val = (out / "val.txt").read_text().split()
    train = (out / "train.txt").read_text().split()
    assert val == want_val and train == sorted(set(stems) - set(want_val))
    assert "2 of 8 images" in stdout and str(out / "val.txt") in stdout
    doc = json.loads((out / "config.json").read_text())
    assert doc["resolved"]["train_images"] == 6 and doc["resolved"]["val_images"] == 2

    write_pairs(tmp_path / "more", 3, seed=5)  # the folder grows; a resumed run keeps its split
    for kind in ("images", "masks"):
        for p in (tmp_path / "more" / kind).iterdir():
            p.rename(root / kind / f"new_{p.name}")
    rc, stdout, err = run(capsys, "train", "--out", out, "--resume", "--epochs", "2")
    assert rc == 0, err
    assert "validation split reused" in stdout
    assert (out / "val.txt").read_text().split() == want_val
    doc = json.loads((out / "config.json").read_text())
    assert doc["resolved"]["val_images"] == 2 and doc["resolved"]["train_images"] == 6
    assert [r["step"] for r in read_jsonl(out / "steps.jsonl")] == list(range(1, 7))  # 3 steps per epoch

    # The written split file is reusable: eval on exactly the held-out images.
    rc, stdout, err = run(capsys, "eval", "--checkpoint", out / "best.pt", "--data", root, "--split",
                          out / "val.txt", "--workers", "0", "--device", "cpu", "--json")
    assert rc == 0, err
    assert json.loads(stdout)["num_images"] == 2


def test_val_fraction_is_validated(tmp_path, capsys):
    root = tmp_path / "plain"
    write_pairs(root, 2)
    rc, _, err = run(capsys, "train", "--data", root, "--out", tmp_path / "a", *TINY_ARGS, "--val-fraction", "1.5")
    assert rc == 2 and "--val-fraction must be between 0 and 1" in one_error_line(err)
    rc, _, err = run(capsys, "train", "--data", root, "--out", tmp_path / "b", *TINY_ARGS, "--val-fraction", "0.9")
    assert rc == 2 and "2 image(s) cannot be split" in one_error_line(err)


# ----------------------------------------------------------------------------- 14. masks without images

def test_masks_without_images_are_named_in_one_warning(tmp_path, capsys):
    root = tmp_path / "plain"
    write_pairs(root, 6)
    for i in (1, 4):
        (root / "images" / f"img{i:02d}.jpg").unlink()  # 6 masks, 4 images
    with pytest.warns(DataWarning, match=r"2 masks in .*masks have no image .* left out: img01\.png, img04\.png"):
        ds = FolderPairs(root)
    assert len(ds) == 4
    rc, _, err = run(capsys, "train", "--data", root, "--out", tmp_path / "r", *TINY_ARGS, "--epochs", "1",
                     "--val-fraction", "0.5")
    assert rc == 0, err
    warned = [line for line in err.splitlines() if "have no image" in line]
    assert len(warned) == 1 and warned[0].startswith("fcnseg train: warning: 2 masks in "), err
    assert "img01.png, img04.png" in warned[0]


# ----------------------------------------------------------------------------- 4. RGB colour masks

COLOURS = {0: (0, 0, 0), 1: (128, 64, 128), 2: (250, 170, 30)}  # background, road, sign


def write_rgb_masks(folder: Path, n: int = 3, seed: int = 0) -> list[np.ndarray]:
    """RGB masks coloured by COLOURS; returns the class-index arrays they encode."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    lut = np.array([COLOURS[i] for i in range(3)], dtype=np.uint8)
    for i in range(n):
        _, lab = random_pair(rng, 20, 28, 3)
        Image.fromarray(lut[lab]).save(folder / f"m{i}.png")
        labels.append(lab)
    return labels


def test_convert_masks_with_a_colour_table(tmp_path, capsys):
    src = tmp_path / "rgb"
    labels = write_rgb_masks(src)
    table = tmp_path / "palette.txt"
    table.write_text("# colour table\n0 0 0 background\n#804080 road\n\n250 170 30\n224 224 192 ignore\n")
    dst = tmp_path / "data" / "masks"
    rc, stdout, err = run(capsys, "convert-masks", src, dst, "--colors", table)
    assert rc == 0, err
    assert "converted 3 mask(s)" in stdout and "3 classes" in stdout
    for i, lab in enumerate(labels):
        np.testing.assert_array_equal(image_files.read_mask(dst / f"m{i}.png", 3), lab)
        assert image_files.read_palette(dst / f"m{i}.png")[:3] == [COLOURS[0], COLOURS[1], COLOURS[2]]  # looks the same
    # named classes land in the dataset root, where the readers look for them
    assert (tmp_path / "data" / "class_names.txt").read_text().split() == ["background", "road", "class_2"]

    rc, _, err = run(capsys, "convert-masks", src, dst, "--colors", table)  # never replaced silently
    assert rc == 2 and "--overwrite" in one_error_line(err)
    assert run(capsys, "convert-masks", src, dst, "--colors", table, "--overwrite")[0] == 0


def test_convert_masks_auto_is_deterministic_and_writes_its_table(tmp_path, capsys):
    src = tmp_path / "rgb"
    labels = write_rgb_masks(src, n=2)
    rc, stdout, err = run(capsys, "convert-masks", src, tmp_path / "out", "--colors", "auto")
    assert rc == 0, err
    # colours sorted by (r, g, b): black, (128,64,128), (250,170,30) -> the same indices as COLOURS
    rows = [line.split() for line in (tmp_path / "out" / "palette.txt").read_text().splitlines()
            if not line.startswith("#")]
    assert rows == [["0", "0", "0", "class_0"], ["128", "64", "128", "class_1"], ["250", "170", "30", "class_2"]]
    for i, lab in enumerate(labels):
        np.testing.assert_array_equal(image_files.read_mask(tmp_path / "out" / f"m{i}.png"), lab)
    # the written table converts the same masks again to the same indices
    rc, _, err = run(capsys, "convert-masks", src, tmp_path / "again", "--colors", tmp_path / "out" / "palette.txt")
    assert rc == 0, err
    np.testing.assert_array_equal(image_files.read_mask(tmp_path / "again" / "m1.png"), labels[1])


def test_convert_masks_lists_unknown_colours_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "rgb"
    write_rgb_masks(src, n=2)
    arr = np.asarray(Image.open(src / "m1.png")).copy()
    arr[:3, :4] = (255, 0, 255)  # 12 pixels of a colour the table does not know
    Image.fromarray(arr).save(src / "m1.png")
    table = tmp_path / "palette.txt"
    table.write_text("0 0 0\n128 64 128\n250 170 30\n")
    dst = tmp_path / "out"
    rc, _, err = run(capsys, "convert-masks", src, dst, "--colors", table)
    line = one_error_line(err)
    assert rc == 2 and "1 colour(s)" in line and f"#ff00ff = rgb(255, 0, 255): 12 px, first in {src / 'm1.png'}" in line
    assert "--unknown ignore" in line and not dst.exists()
    rc, stdout, err = run(capsys, "convert-masks", src, dst, "--colors", table, "--unknown", "ignore")
    assert rc == 0 and "12 pixels of 1 unknown colour(s) set to 255" in stdout
    got = image_files.read_mask(dst / "m1.png")
    assert (got[:3, :4] == 255).all() and (got[3:] < 3).all()


def test_rgb_masks_error_points_to_convert_masks(tmp_path, capsys):
    root = tmp_path / "plain"
    write_pairs(root, 2)
    Image.fromarray(np.full((32, 48, 3), COLOURS[1], np.uint8)).save(root / "masks" / "img00.png")  # RGB
    rc, _, err = run(capsys, "train", "--data", root, "--out", tmp_path / "r", *TINY_ARGS, "--val-fraction", "0.5")
    line = one_error_line(err)
    assert rc == 2 and "is an RGB image (colours, not class indices)" in line
    assert f"fcnseg convert-masks {root / 'masks'} NEW_FOLDER --colors palette.txt|auto" in line


# ----------------------------------------------------------------------------- 9. --init with another label set

def test_init_from_a_checkpoint_with_another_class_count(tmp_path, capsys):
    ck = random_head_checkpoint(tmp_path / "four.pt", num_classes=4)  # trained-looking: random score layers
    data = make_synthetic_voc(tmp_path / "three", n_train=2, n_val=1, size=(32, 48), num_classes=3, seed=0)
    out = tmp_path / "run"
    # lr > 0 but weight decay 0: at the first step the zero score layers pass no gradient to the
    # backbone or the upsampling, so after one step those still hold exactly their initial values.
    rc, stdout, err = run(capsys, "train", "--data", data, "--out", out, *TINY_ARGS, "--init", ck, "--iters", "1",
                          "--weight-decay", "0")
    assert rc == 0, err
    assert "score layers re-initialised for the data's 3 classes" in stdout and "4-class" in stdout
    src, trained = load_checkpoint(ck)["state_dict"], load_checkpoint(out / "last.pt")
    assert trained["model"]["num_classes"] == 3
    sd = trained["state_dict"]
    params = dict(build_model("fcn8s_small", num_classes=3, width=8).named_parameters())
    backbone = [k for k in params if k.startswith("backbone.")]  # parameters (BN statistics do move)
    assert backbone and all(torch.equal(sd[k], src[k]) for k in backbone)  # copied, bit for bit
    for name in ("upscore2", "upscore_pool4", "upscore8"):  # bilinear for 3 classes
        w = sd[f"{name}.weight"]
        torch.testing.assert_close(w, bilinear_kernel(3, w.shape[-1]), rtol=0, atol=0)
    # score layers started at zero: the first loss is exactly that of uniform logits, ln 3
    assert read_jsonl(out / "steps.jsonl")[0]["loss"] == pytest.approx(math.log(3), rel=1e-6)
    assert sd["score_fr.weight"].abs().sum() > 0  # and it trained
    assert sd["score_fr.weight"].shape == (3, 64, 1, 1)

