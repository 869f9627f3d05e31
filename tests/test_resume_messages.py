"""A run that crashed before its first checkpoint: ``--resume`` and a plain restart both say
the one thing that works (start again with --overwrite), instead of sending the user in a
circle ("start without --resume" / "pass --overwrite")."""
from __future__ import annotations

import sys

import pytest

from _engine_utils import TINY_ARGS, read_jsonl, torch_one_thread  # noqa: F401 (autouse fixture)


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from fcnseg.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    rc = main(list(args))
    return rc, capsys.readouterr().err


@pytest.fixture
def crashed_run(synthetic_voc, tmp_path, monkeypatch, capsys):
    """A run directory as a crash at the first step leaves it: config.json, empty steps.jsonl, no last.pt."""
    import fcnseg.engine.trainer as trainer_mod

    def crash(*a, **k):
        raise RuntimeError("simulated crash in the first step (e.g. a segfault in a kernel)")

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "segmentation_loss", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            _cli(monkeypatch, capsys, "train", "--data", str(synthetic_voc), "--out", str(run), "--iters", "2",
                 *TINY_ARGS)
    assert (run / "config.json").is_file() and not (run / "last.pt").exists()
    return run


def test_resume_without_checkpoint_says_start_again_with_overwrite(crashed_run, monkeypatch, capsys):
    rc, err = _cli(monkeypatch, capsys, "train", "--out", str(crashed_run), "--resume")
    assert rc == 2
    assert err.splitlines() == [
        f"fcnseg train: error: no last.pt in {crashed_run}: the run stopped before its first checkpoint, so "
        f"there is nothing to resume; start it again with your original command plus --overwrite "
        f"(without --resume)"]


def test_restart_without_resume_says_overwrite_not_resume(crashed_run, synthetic_voc, monkeypatch, capsys):
    args = ["train", "--data", str(synthetic_voc), "--out", str(crashed_run), "--iters", "2", *TINY_ARGS]
    rc, err = _cli(monkeypatch, capsys, *args)
    assert rc == 2
    assert err.splitlines() == [
        f"fcnseg train: error: run directory {crashed_run} holds a run that stopped before its first checkpoint "
        f"(no last.pt), so it cannot be resumed: pass --overwrite to start it again, or choose another --out"]
    # ... and that advice works
    rc, err = _cli(monkeypatch, capsys, *args, "--overwrite")
    assert rc == 0, err
    assert [s["step"] for s in read_jsonl(crashed_run / "steps.jsonl")] == [1, 2]


def test_finished_run_offers_resume_and_overwrite(synthetic_voc, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(synthetic_voc), "--out", str(run), "--iters", "1", *TINY_ARGS]
    assert _cli(monkeypatch, capsys, *args)[0] == 0
    rc, err = _cli(monkeypatch, capsys, *args)
    assert rc == 2 and f"continue that run with `fcnseg train --out {run} --resume`" in err
    assert "pass --overwrite" in err and len(err.splitlines()) == 1
