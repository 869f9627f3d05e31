"""Files written by train / eval / predict / export get the permissions the umask asks for
(0644 with umask 022, 0600 with 077), like any file ``open()`` creates: results in a shared
folder stay readable to colleagues."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from _engine_utils import TINY_ARGS
from fcnseg.outputs import atomic_write_text, current_umask


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_every_output_honours_the_umask(synthetic_voc, tmp_path, monkeypatch, capsys, umask, file_mode, dir_mode):
    from fcnseg.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    out = tmp_path / "out"
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b"):
        (photos / f"{name}.jpg").write_bytes((synthetic_voc / "JPEGImages" / "val_00000.jpg").read_bytes())
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        assert main(["train", "--data", str(synthetic_voc), "--out", str(out / "run"), "--iters", "3",
                     *TINY_ARGS]) == 0
        ckpt = str(out / "run" / "best.pt")
        assert main(["eval", "--checkpoint", ckpt, "--data", str(synthetic_voc), "--workers", "0",
                     "--device", "cpu", "--out", str(out / "eval")]) == 0
        assert main(["predict", "--checkpoint", ckpt, str(photos), "--out", str(out / "preds"),
                     "--heatmaps"]) == 0
        exported = False
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401

            exported = main(["export", "--checkpoint", ckpt, "--out", str(out / "model.onnx")]) == 0
        except ImportError:
            pass  # without the onnx extra: the other commands are still checked
    finally:
        os.umask(old)
    capsys.readouterr()
    modes = _modes(out)
    expected = {"run/best.pt", "run/last.pt", "run/config.json", "run/steps.jsonl", "run/metrics.jsonl",
                "run/summary.json", "run/train_curve.png", "eval/eval.json", "eval/confusion_matrix.png",
                "preds/a.png", "preds/a_overlay.png", "preds/b_prob_background.png"}
    if exported:
        expected.add("model.onnx")
    assert expected <= set(modes), sorted(modes)
    wrong = {p: oct(m) for p, m in modes.items()
             if m != (dir_mode if (out / p).is_dir() else file_mode)}
    assert not wrong, f"expected files {oct(file_mode)}, folders {oct(dir_mode)}: {wrong}"
    assert not [p for p in modes if Path(p).name.startswith(".")]  # no temporaries left


def test_current_umask_matches_what_open_does(tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("x")  # open() applies the umask itself
    assert stat.S_IMODE(probe.stat().st_mode) == 0o666 & ~current_umask()
    atomic_write_text(tmp_path / "atomic", "x")
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == stat.S_IMODE(probe.stat().st_mode)
