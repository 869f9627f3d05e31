"""A bad file met inside a DataLoader worker reaches the user as the same one line as with
``--workers 0`` (train, its validation, eval, bench), and ``fcnseg check-data``."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _engine_utils import cli_cmd, random_head_checkpoint, subprocess_env
from fcnseg.data.image_files import read_image
from fcnseg.engine.loader_errors import unwrap_worker_error, unwrapped_batches
from fcnseg.errors import ConfigError, DataError

# Only the message under test on stderr: on a 1-CPU machine 2 workers would add PyTorch's
# (legitimate) "excessive worker" warning.
_QUIET_ENV = {"PYTHONWARNINGS": "ignore:This DataLoader will create"}


def _corrupt_copy(src: Path, dst: Path, split: str) -> tuple[Path, Path]:
    """A copy of the VOC dataset ``src`` whose first ``split`` image is a truncated JPEG."""
    shutil.copytree(src, dst)
    first = (dst / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[0]
    bad = dst / "JPEGImages" / f"{first}.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # cut inside the entropy-coded data
    return dst, bad


def _reader_message(bad: Path) -> str:
    """The reader's own message for ``bad`` (what --workers 0 shows): the independent reference."""
    with pytest.raises(DataError) as e:
        read_image(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    return str(e.value)


def _expected_line(command: str, bad: Path) -> str:
    return f"fcnseg {command}: error: {_reader_message(bad)}"


@pytest.mark.parametrize("split", ["train", "val"])
def test_train_worker_error_is_one_line(synthetic_voc, tmp_path, split):
    # split=val: the train images are fine, the bad one is met by the validation after epoch 1
    data, bad = _corrupt_copy(synthetic_voc, tmp_path / "ds", split)
    res = subprocess.run(cli_cmd("train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--model", "fcn8s_small", "--model-arg", "width=8", "--crop-size", "32",
                                 "--batch-size", "2", "--amp", "off", "--device", "cpu", "--no-progress",
                                 "--workers", "2"),
                         capture_output=True, text=True, timeout=300, env={**subprocess_env(), **_QUIET_ENV})
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [_expected_line("train", bad)]
    assert "Traceback" not in res.stdout + res.stderr


def test_eval_worker_error_is_one_line(synthetic_voc, tmp_path):
    data, bad = _corrupt_copy(synthetic_voc, tmp_path / "ds", "val")
    ckpt = random_head_checkpoint(tmp_path / "c.pt", num_classes=4)
    res = subprocess.run(cli_cmd("eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "val",
                                 "--device", "cpu", "--workers", "2"),
                         capture_output=True, text=True, timeout=300, env={**subprocess_env(), **_QUIET_ENV})
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [_expected_line("eval", bad)]


def test_bench_loader_worker_error_is_one_line(synthetic_voc, tmp_path):
    data, bad = _corrupt_copy(synthetic_voc, tmp_path / "ds", "train")
    res = subprocess.run(cli_cmd("bench", "--sections", "loader", "--data", str(data), "--workers", "2",
                                 "--train-crop", "32", "--train-batch", "2", "--threads", "1", "--device", "cpu",
                                 "--quick"),
                         capture_output=True, text=True, timeout=300, env={**subprocess_env(), **_QUIET_ENV})
    assert res.returncode == 2, res.stderr
    # bench logs its progress on stderr: the error is the last line, and the only other lines are logs
    lines = res.stderr.splitlines()
    assert lines[-1] == _expected_line("bench", bad)
    assert all(ln.startswith(("[", "  ")) for ln in lines[:-1]) and "Traceback" not in res.stderr, lines


# ----------------------------------------------------------------------------- unwrapping itself

def _wrapped(exc: BaseException, where: str = "in DataLoader worker process 3") -> BaseException:
    """``exc`` as the main process gets it back from a worker: through PyTorch's own ExceptionWrapper."""
    from torch._utils import ExceptionWrapper

    try:
        raise exc
    except BaseException:
        wrapper = ExceptionWrapper(where=where)
    try:
        wrapper.reraise()
    except BaseException as e:
        return e
    raise AssertionError("reraise did not raise")


@pytest.mark.parametrize("cls", [DataError, ConfigError])
def test_unwrap_recovers_type_and_message(cls):
    message = "mask m.png has labels outside [0, 4): values [7] in 3 pixels; relabel them (see: a: b)"
    got = _wrapped(cls(message))
    assert str(got).startswith(f"Caught {cls.__name__} in DataLoader worker process 3.")  # what users saw
    original = unwrap_worker_error(got)
    assert type(original) is cls and str(original) == message


def test_unwrap_chained_multiline_and_foreign_errors():
    # raised while handling another error (the traceback then shows both): the last one counts
    try:
        try:
            raise DataError("inner problem")
        except DataError:
            raise DataError("outer problem\nsecond line")
    except DataError as e:
        got = _wrapped(e, where="in pin memory thread for device 0")
    assert str(unwrap_worker_error(got)) == "outer problem\nsecond line"
    # not ours: a bug keeps PyTorch's traceback text; ours but not wrapped: unchanged
    bug = _wrapped(RuntimeError("boom"))
    assert unwrap_worker_error(bug) is bug
    plain = DataError("Caught nothing")
    assert unwrap_worker_error(plain) is plain


def test_unwrapped_batches_passes_batches_and_unwraps():
    assert list(unwrapped_batches([1, 2, 3])) == [1, 2, 3]

    def loader():
        yield "a"
        raise _wrapped(DataError("image file x.jpg is empty (0 bytes)"))

    it = unwrapped_batches(loader())
    assert next(it) == "a"
    with pytest.raises(DataError) as e:
        next(it)
    assert str(e.value) == "image file x.jpg is empty (0 bytes)"


# ----------------------------------------------------------------------------- check-data

def _check(capsys, *args: str) -> tuple[int, list[str]]:
    from fcnseg.cli import main

    rc = main(["check-data", *args])
    return rc, capsys.readouterr().out.splitlines()


def test_check_data_reports_every_problem_once(synthetic_voc, tmp_path, capsys):
    data, bad = _corrupt_copy(synthetic_voc, tmp_path / "ds", "train")
    ids = (data / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    masks = data / "SegmentationClass"
    # a mask of the wrong size, and a mask with a label >= 4 classes
    small = np.zeros((10, 10), np.uint8)
    im = Image.open(masks / f"{ids[1]}.png")
    resized = Image.frombytes("P", (10, 10), small.tobytes())
    resized.putpalette(im.getpalette())
    resized.save(masks / f"{ids[1]}.png")
    labels = np.array(Image.open(masks / f"{ids[2]}.png"))
    labels[:2, :3] = 9
    out_of_range = Image.frombytes("P", labels.shape[::-1], labels.tobytes())
    out_of_range.putpalette(im.getpalette())
    out_of_range.save(masks / f"{ids[2]}.png")

    rc, lines = _check(capsys, str(data))
    assert rc == 1
    problems = [ln for ln in lines if ln.startswith("problem: ")]
    assert len(problems) == 3, lines
    assert problems[0] == f"problem: {_reader_message(bad)}"
    assert f"size mismatch: image {data / 'JPEGImages' / (ids[1] + '.jpg')} is 48x32" in problems[1]
    assert f"mask {masks / (ids[2] + '.png')} has labels outside [0, 4)" in problems[2]
    assert "values [9] in 6 pixels" in problems[2]
    assert lines[0].startswith(f"dataset {data}: PASCAL VOC layout; 4 classes, from class_names.txt")
    assert "split train: 6 pairs, image size 48x32" in lines and "split val: 3 pairs, image size 48x32" in lines
    assert lines[-1] == "FAILED: checked 9 pairs in 2 split(s): 3 problems, 0 warnings"

    # only the val split: clean
    rc, lines = _check(capsys, str(data), "--split", "val")
    assert rc == 0 and lines[-1] == "OK: checked 3 pairs in 1 split(s): 0 problems, 0 warnings"


def test_check_data_label_shares_and_binary_mask_warning(tmp_path, capsys):
    root = tmp_path / "fg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    fg = 0
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        mask = np.zeros((8, 10), np.uint8)
        mask[: 2 + i, :5] = 255  # foreground exported as 255, the usual binary-annotation output
        fg += (2 + i) * 5
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    rc, lines = _check(capsys, str(root))
    assert rc == 0  # a warning, not a problem
    warnings = [ln for ln in lines if ln.startswith("warning: ")]
    assert len(warnings) == 1 and "only the values 0 and 255" in warnings[0], lines
    assert "1 class, inferred" in lines[0] and "split all: 3 pairs, image size 10x8" in lines
    total = 3 * 80
    assert f"label pixels: 0 class_0 {100 * (total - fg) / total:.1f}%, 255 ignore {100 * fg / total:.1f}%" in lines


def test_check_data_unopenable_split_and_not_a_dataset(synthetic_voc, tmp_path, capsys):
    data = tmp_path / "ds"
    shutil.copytree(synthetic_voc, data)
    first_val = (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    (data / "SegmentationClass" / f"{first_val}.png").unlink()
    rc, lines = _check(capsys, str(data))
    assert rc == 1
    assert [ln for ln in lines if ln.startswith("problem: ")] == [
        f"problem: split val: split file {data / 'ImageSets' / 'Segmentation' / 'val.txt'} lists id "
        f"'{first_val}' but its mask {data / 'SegmentationClass' / (first_val + '.png')} is missing; "
        f"add the file or remove the id from the split file"]
    from fcnseg.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["check-data", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "is not a dataset folder" in err
