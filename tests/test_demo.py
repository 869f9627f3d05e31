"""The one-command demo: every artefact it promises exists and its numbers are consistent."""
from __future__ import annotations

import json

import pytest

from fcnseg.demo import run_demo
from fcnseg.errors import ConfigError


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, capsys):
    out = tmp_path / "demo"
    summary = run_demo(out, minutes=0.5, n_train=24, n_val=6, epochs=2, n_examples=2,
                       size=(64, 96), width=8, progress=False)
    for rel in ("report.md", "report.html", "summary.json", "train/best.pt", "train/last.pt",
                "train/train_curve.png", "train/metrics.jsonl", "eval/confusion_matrix.png",
                "eval/eval.json", "predictions/val_00000.png", "predictions/val_00000_overlay.png",
                "predictions/val_00000_panel.png"):
        assert (out / rel).is_file(), rel
    saved = json.loads((out / "summary.json").read_text())
    assert saved["miou"] == pytest.approx(summary["miou"])
    assert 0.0 <= summary["miou"] <= 1.0 and 0.0 <= summary["pixel_acc"] <= 1.0
    evaluated = json.loads((out / "eval" / "eval.json").read_text())
    assert evaluated["miou"] == pytest.approx(summary["miou"])  # report = evaluation of best.pt
    report = (out / "report.md").read_text()
    assert f"{100 * summary['miou']:.1f}" in report and "| circle |" in report
    html = (out / "report.html").read_text()
    assert "predictions/val_00000_panel.png" in html and "train/train_curve.png" in html
    last = capsys.readouterr().out.strip().splitlines()[-1]  # ends with the web page's command
    assert last.endswith(f"fcnseg serve --checkpoint {out / 'train' / 'best.pt'}")


def test_demo_refuses_foreign_non_empty_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(ConfigError, match="--overwrite"):
        run_demo(tmp_path, minutes=0.1)
    assert (tmp_path / "precious.txt").read_text() == "user data"
