"""``fcnseg predict``: each image's files appear together or not at all (also on Ctrl-C),
"n of N inputs done" on interrupt and at the end, ``--skip-existing`` finishes an
interrupted run, and a run where nothing succeeds creates nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import fcnseg
from _engine_utils import subprocess_env
from _predict_utils import save_tiny_checkpoint, smooth_image, write_image
from fcnseg.output_set import STAGING_PREFIX, OutputSet, is_complete

# `fcnseg predict` whose commit of b's set stops between two renames (b_overlay.png moved,
# the marker b.png not yet) and says so, until the test writes a line on its stdin: the
# test's SIGINT lands at the worst moment for certain.
_PAUSING_PREDICT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from fcnseg.output_set import STAGING_PREFIX
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        src, dst = Path(src), Path(dst)
        if src.parent.name.startswith(STAGING_PREFIX) and dst.parent != src.parent and dst.name == "b.png":
            print("MID-COMMIT", flush=True)
            sys.stdin.readline()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
    from fcnseg.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("sets") / "tiny.pt")


def _photos(folder, n=3):
    return [write_image(folder / f"{name}.png", smooth_image(24 + 4 * i, 30, seed=i))
            for i, name in enumerate("abc"[:n])]


def test_sigint_mid_set_then_skip_existing_finishes(ckpt, tmp_path, capsys):
    photos = _photos(tmp_path / "in")
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(ckpt), str(tmp_path / "in"), "--out", str(out)]
    # SIG_DFL in the child: a runner that starts the suite in the background (`cmd &` in a script)
    # hands SIGINT down ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-c", _PAUSING_PREDICT, *args], env=subprocess_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = [proc.stdout.readline()]
    if lines[-1].strip() != "MID-COMMIT":
        proc.kill()  # it may wait on stdin: never block on its pipes
        raise AssertionError(f"no MID-COMMIT: {lines} {proc.communicate(timeout=30)}")
    # the window is real: half of b's set is in place
    assert (out / "b_overlay.png").is_file() and not (out / "b.png").exists()
    proc.send_signal(signal.SIGINT)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-1] == (f"fcnseg predict: interrupted: 2 of 3 inputs done; outputs in {out}; "
                                       f"to finish, run the same command with --skip-existing")
    # b's set was finished before the interrupt took effect; c was not started
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]

    # a kill between two renames (not a Ctrl-C) would leave a set without its marker:
    (out / "c_overlay.png").write_bytes(b"stray half of a set")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    from fcnseg.cli import main

    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # unchanged: no silent overwrite
    assert main([*args, "--skip-existing"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"fcnseg predict: 3 of 3 inputs done (2 already done: skipped); outputs in {out}")
    for name in ("a.png", "a_overlay.png", "b.png", "b_overlay.png"):
        assert (out / name).stat().st_mtime_ns == before[name]  # skipped, not rewritten
    model = fcnseg.load_model(ckpt)
    for photo in photos:
        expected = fcnseg.segment(model, photo)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{photo.stem}.png")), expected)
        Image.open(out / f"{photo.stem}_overlay.png").verify()  # c's stray half was replaced
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_inputs_counted_once_and_nothing_created_without_success(ckpt, tmp_path, capsys):
    from fcnseg.cli import main

    gray = write_image(tmp_path / "photos" / "gray.jpg", np.full((20, 24, 3), 128, np.uint8))
    missing = tmp_path / "nothere.jpg"
    out = tmp_path / "preds"
    assert main(["predict", "--checkpoint", str(ckpt), str(gray), str(missing), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = [ln for ln in captured.err.splitlines() if not ln.startswith("fcnseg predict: precision ")]  # auto's note
    assert err == [
        f"fcnseg predict: 1 of 2 inputs done, 1 failed: {missing} (no such file or folder); outputs in {out}"]
    assert sorted(p.name for p in out.iterdir()) == ["gray.png", "gray_overlay.png"]

    broken = tmp_path / "photos" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    nested = tmp_path / "new" / "preds"
    assert main(["predict", "--checkpoint", str(ckpt), str(missing), str(broken), "--out", str(nested)]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("fcnseg predict: 0 of 2 inputs done, 2 failed: ") and last.endswith("; nothing written")
    assert not (tmp_path / "new").exists()  # nothing succeeded: no folder left behind


def test_output_set_is_all_or_nothing(tmp_path):
    names = ["x_overlay.png", "x.png"]
    with pytest.raises(RuntimeError, match="boom"):
        with OutputSet(tmp_path, names) as files:
            files.path("x_overlay.png").write_bytes(b"1")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # nothing appeared, staging removed
    with OutputSet(tmp_path, names) as files:
        for n in names:
            files.path(n).write_bytes(n.encode())
    assert files.committed and is_complete(tmp_path, names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert not is_complete(tmp_path, [*names, "x_panel.png"])  # another option set: incomplete
    with pytest.raises(RuntimeError, match="without writing"):
        with OutputSet(tmp_path, ["y.png"]):
            pass
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]


@pytest.fixture
def default_sigint():
    """Ctrl-C's usual handler for the test, also when the suite was started with SIGINT ignored
    (`cmd &` in a script): the deferring handler rightly keeps an ignored SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_during_commit_is_deferred_in_process(tmp_path, monkeypatch, default_sigint):
    """The same guarantee without a subprocess: a SIGINT raised by the first rename is acted on
    only after the last one."""
    real = os.replace
    calls = []

    def replace_and_interrupt(src, dst):
        real(src, dst)
        calls.append(os.path.basename(dst))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # delivered now, to the deferring handler

    files = OutputSet(tmp_path, ["p_overlay.png", "p_prob.png", "p.png"])
    for n in files.names:
        files.path(n).write_bytes(b"x")
    monkeypatch.setattr(os, "replace", replace_and_interrupt)
    with pytest.raises(KeyboardInterrupt):
        files.commit()
    assert calls == ["p_overlay.png", "p_prob.png", "p.png"] and files.committed
    assert is_complete(tmp_path, files.names)
