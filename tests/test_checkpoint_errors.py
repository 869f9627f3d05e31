"""Files that are not checkpoints are called what they are: empty, a JPEG, unknown bytes;
the "could execute code" refusal is kept for real pickles with disallowed globals."""
from __future__ import annotations

import os
import pickle
import sys

import pytest
import torch

from _engine_utils import random_head_checkpoint
from _predict_utils import smooth_image, write_image
from fcnseg.torch_files import safe_torch_load


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _cli_error(capsys, monkeypatch, *args: str) -> str:
    """Run ``fcnseg ARGS`` in-process; it must fail with exit code 2 and ONE stderr line."""
    from fcnseg.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    rc = main(list(args))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "Detected pickle protocol" not in ln and "return Unpickler" not in ln]
    assert rc == 2 and len(lines) == 1, err
    return lines[0]


@pytest.fixture
def bad_files(tmp_path):
    files = {"empty": tmp_path / "empty.pt", "jpeg": tmp_path / "photo.pt", "bytes": tmp_path / "noise.pt",
             "pickle": tmp_path / "evil.pt"}
    files["empty"].write_bytes(b"")
    jpg = write_image(tmp_path / "photo.jpg", smooth_image(16, 16))
    files["jpeg"].write_bytes(jpg.read_bytes())
    files["bytes"].write_bytes(bytes(range(7, 256)) * 4)  # starts with 0x07: neither zip nor pickle
    files["pickle"].write_bytes(pickle.dumps({"state_dict": _Evil()}))
    return files


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_predict_and_eval_name_what_the_file_is(bad_files, synthetic_voc, tmp_path, capsys, monkeypatch):
    expect = {"empty": "empty file (0 bytes)", "jpeg": "not a PyTorch checkpoint (looks like a JPEG image)",
              "bytes": "not a PyTorch checkpoint (looks like unknown bytes)",
              "pickle": "refused to load: the file contains Python objects"}
    photo = write_image(tmp_path / "in.png", smooth_image(20, 20))
    for kind, path in bad_files.items():
        line = _cli_error(capsys, monkeypatch, "predict", "--checkpoint", str(path), str(photo),
                          "--out", str(tmp_path / f"out_{kind}"))
        assert line.startswith(f"fcnseg predict: error: {path}: {expect[kind]}"), line
        line = _cli_error(capsys, monkeypatch, "eval", "--checkpoint", str(path), "--data", str(synthetic_voc),
                          "--workers", "0", "--device", "cpu")
        assert line.startswith(f"fcnseg eval: error: {path}: {expect[kind]}"), line
        assert ("could execute code" in line) == (kind == "pickle")
    assert not any((tmp_path / f"out_{k}").exists() for k in bad_files)


def test_real_torch_files_still_load(tmp_path):
    """The magic-byte check lets through both formats torch.save writes."""
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(sd, tmp_path / "zip.pt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert (tmp_path / "zip.pt").read_bytes()[:4] == b"PK\x03\x04"
    assert (tmp_path / "legacy.pt").read_bytes()[:1] == b"\x80"
    for name in ("zip.pt", "legacy.pt"):
        assert torch.equal(safe_torch_load(tmp_path / name)["w"], sd["w"])
    ckpt = random_head_checkpoint(tmp_path / "c.pt")
    assert safe_torch_load(ckpt)["format"] == "fcnseg-checkpoint"


def test_truncated_checkpoint_is_called_corrupt(tmp_path, capsys, monkeypatch, synthetic_voc):
    ckpt = random_head_checkpoint(tmp_path / "c.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[:1000])  # a zip with no central directory
    line = _cli_error(capsys, monkeypatch, "eval", "--checkpoint", str(cut), "--data", str(synthetic_voc),
                      "--workers", "0", "--device", "cpu")
    assert f"{cut}: not a readable PyTorch file" in line and "truncated or corrupt" in line
