"""Reliability: signals + exact resume, kills during checkpoint writes, divergence, unsafe
checkpoints, output-directory safety, determinism, clear errors."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from _engine_utils import (TINY_ARGS, cli_cmd, random_head_checkpoint, read_jsonl, state_dicts_equal,
                           subprocess_env, tiny_cfg,
                           torch_one_thread)  # noqa: F401 (autouse fixture)
from fcnseg.checkpoint import load_checkpoint
from fcnseg.engine.train import train
from fcnseg.errors import CheckpointError, ConfigError, DivergenceError


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run ``fcnseg ARGS`` in-process; return (exit code, stderr)."""
    from fcnseg.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    rc = main(list(args))
    return rc, capsys.readouterr().err


def _wait_for_steps(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {n}: {proc.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError(f"no step {n} within {timeout}s")


# ----------------------------------------------------------------------------- (1) signals


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_resumable_checkpoint_and_resume_is_exact(synthetic_voc, tmp_path, sig, code):
    # 6 train images, batch 2: 3 steps per epoch, 8 epochs, validated after epochs 4 and 8.
    args = ["train", "--data", str(synthetic_voc), "--iters", "24", "--val-every", "4", "--deterministic",
            "--seed", "7", *TINY_ARGS]
    env = subprocess_env(threads=1)
    ref = subprocess.Popen(cli_cmd(*args, "--out", str(tmp_path / "ref")), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    proc = subprocess.Popen(cli_cmd(*args, "--out", str(run)), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_steps(run / "steps.jsonl", 4, proc)  # mid-epoch 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"stopped by {signal.Signals(sig).name} at step" in err and "--resume" in err
    last = load_checkpoint(run / "last.pt")
    stopped_at = last["step"]
    assert 4 <= stopped_at < 24 and last["completed"] is False
    assert len(read_jsonl(run / "steps.jsonl")) == stopped_at

    # resume (only --out and --resume: the rest comes from the run's config)
    res = subprocess.run(cli_cmd("train", "--out", str(run), "--resume"), env=env, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run} at step {stopped_at}" in res.stdout
    ref_out, ref_err = ref.communicate(timeout=180)
    assert ref.returncode == 0, ref_err

    ref_steps, run_steps = read_jsonl(tmp_path / "ref" / "steps.jsonl"), read_jsonl(run / "steps.jsonl")
    assert [s["step"] for s in run_steps] == list(range(1, 25))
    # bit-for-bit: floats round-trip exactly through JSON
    assert [s["loss"] for s in run_steps] == [s["loss"] for s in ref_steps]
    assert [s["lr"] for s in run_steps] == [s["lr"] for s in ref_steps]
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(run / "last.pt")
    assert state_dicts_equal(a["state_dict"], b["state_dict"])
    assert [r["val"]["miou"] for r in read_jsonl(run / "metrics.jsonl")] == \
        [r["val"]["miou"] for r in read_jsonl(tmp_path / "ref" / "metrics.jsonl")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists the process group from /proc")
def test_sigterm_to_process_group_with_loader_workers_resumes_exactly(synthetic_voc, tmp_path):
    """A scheduler's kill (or Ctrl-C in a terminal) reaches the whole process group: the trainer
    AND its data-loader workers. The run must still save a resumable last.pt and resume exactly."""
    workers = [a if a != "0" or TINY_ARGS[i - 1] != "--workers" else "2" for i, a in enumerate(TINY_ARGS)]
    assert workers[workers.index("--workers") + 1] == "2"
    args = ["train", "--data", str(synthetic_voc), "--iters", "15", "--val-every", "2", "--deterministic",
            "--seed", "3", *workers]
    env = subprocess_env(threads=1)
    run = tmp_path / "run"
    # its own process group (session), as a shell job or a scheduler's task would have
    proc = subprocess.Popen(cli_cmd(*args, "--out", str(run)), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_steps(run / "steps.jsonl", 4, proc)  # mid-epoch 2
        assert len(_process_group(proc.pid)) >= 3  # the trainer and its 2 loader workers
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        t0 = time.monotonic()  # the workers leave with the trainer (they ignore the signal itself)
        while _process_group(proc.pid) and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        assert not _process_group(proc.pid)
    finally:
        if _process_group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM at step" in err and "--resume" in err
    last = load_checkpoint(run / "last.pt")
    assert 4 <= last["step"] < 15 and last["completed"] is False
    assert len(read_jsonl(run / "steps.jsonl")) == last["step"]

    res = subprocess.run(cli_cmd("train", "--out", str(run), "--resume"), env=env, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    # reference: uninterrupted, and without workers (augmentation depends on the sample's position only)
    ref = subprocess.run(cli_cmd(*args[:-len(workers)], *TINY_ARGS, "--out", str(tmp_path / "ref")), env=env,
                         capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_steps, run_steps = read_jsonl(tmp_path / "ref" / "steps.jsonl"), read_jsonl(run / "steps.jsonl")
    assert [s["step"] for s in run_steps] == list(range(1, 16))
    assert [(s["loss"], s["lr"]) for s in run_steps] == [(s["loss"], s["lr"]) for s in ref_steps]  # bit for bit
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(run / "last.pt")
    assert state_dicts_equal(a["state_dict"], b["state_dict"])


def _process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


# ----------------------------------------------------------------------------- (2) SIGKILL mid-write

_SAVER = textwrap.dedent("""
    import io, sys, time, torch
    from fcnseg.checkpoint import save_checkpoint
    from fcnseg.models import build_model
    path, pause_at = sys.argv[1], int(sys.argv[2])
    real_save = torch.save
    i = 0

    def save_in_two_halves(obj, f):
        # the real serialisation, written in two halves; at checkpoint `pause_at` it stops
        # between them and says so, so the test's SIGKILL lands inside a write for certain
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getbuffer()
        f.write(data[: len(data) // 2])
        f.flush()
        if i == pause_at:
            print("HALF-WRITTEN", i, flush=True)
            time.sleep(600)
        f.write(data[len(data) // 2:])

    torch.save = save_in_two_halves
    model = build_model("fcn8s_small", num_classes=4, width=8)
    while True:
        i += 1
        save_checkpoint(path, model, step=i, blob=torch.full((2_000_000,), float(i)))
""")


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    """A process killed in the middle of writing last.pt leaves the previous complete checkpoint
    under that name (and at most a stray temporary file), never a truncated one."""
    path = tmp_path / "last.pt"
    for pause_at in (1, 3, 2):  # the first round has no previous file: the name must not exist yet
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), str(pause_at)],
                                env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()  # blocks until the saver is half-way through checkpoint `pause_at`
        assert line.split() == ["HALF-WRITTEN", str(pause_at)], proc.stderr.read()
        tmps = list(tmp_path.glob(".last.pt.*.tmp"))
        assert len(tmps) == 1 and 0 < tmps[0].stat().st_size  # the write really is in progress
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if pause_at == 1:
            assert not path.exists()
        else:
            ck = load_checkpoint(path)  # the final name holds the previous, complete checkpoint
            assert ck["step"] == pause_at - 1
            assert ck["blob"].shape == (2_000_000,) and bool((ck["blob"] == pause_at - 1).all())
        for t in tmps:
            t.unlink()


# ----------------------------------------------------------------------------- (3) divergence


def test_nan_loss_stops_at_that_step_and_keeps_last_good_checkpoint(synthetic_voc, tmp_path, monkeypatch):
    import fcnseg.engine.trainer as train_mod

    calls = {"n": 0}
    real_loss = train_mod.segmentation_loss

    def loss_nan_at_step_5(logits, target, weight=None):
        calls["n"] += 1
        loss = real_loss(logits, target, weight)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(train_mod, "segmentation_loss", loss_nan_at_step_5)
    out = tmp_path / "nan"
    with pytest.raises(DivergenceError) as e:
        train(tiny_cfg(synthetic_voc, out, epochs=3))
    msg = str(e.value)
    assert "loss is nan at step 5 (epoch 2)" in msg
    assert "lower learning rate" in msg and "check the labels" in msg and str(out / "last.pt") in msg
    last = load_checkpoint(out / "last.pt")  # from the end of epoch 1 (step 3), not the diverged state
    assert last["step"] == 3 and all(torch.isfinite(v).all() for v in last["state_dict"].values()
                                     if v.is_floating_point())
    assert load_checkpoint(out / "best.pt")["step"] == 3
    assert len(read_jsonl(out / "steps.jsonl")) == 4


def test_huge_learning_rate_diverges_with_clear_message(synthetic_voc, tmp_path):
    with pytest.raises(DivergenceError, match=r"training diverged: loss is (nan|inf) at step \d+.*--lr, now 1e\+10"):
        train(tiny_cfg(synthetic_voc, tmp_path / "huge", epochs=3, lr=1e10))


# ----------------------------------------------------------------------------- (4) unsafe checkpoints


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates a file


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"format": "fcnseg-checkpoint", "model": {"name": "fcn8s_small"}, "state_dict": {},
                "payload": _Evil(str(marker))}, path)
    return path


def test_malicious_pickle_is_refused_everywhere(synthetic_voc, tmp_path, monkeypatch, capsys):
    proof = tmp_path / "proof_marker"
    torch.load(_evil_checkpoint(tmp_path / "proof.pt", proof), weights_only=False)
    assert proof.exists()  # the payload is real: an unsafe load would run it

    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    rc, err = _cli(monkeypatch, capsys, "eval", "--checkpoint", str(evil), "--data", str(synthetic_voc),
                   "--workers", "0", "--device", "cpu")
    assert rc == 2 and "refused to load" in err and str(evil) in err

    rc, err = _cli(monkeypatch, capsys, "train", "--data", str(synthetic_voc), "--out", str(tmp_path / "t1"),
                   "--init", str(evil), "--epochs", "1", *TINY_ARGS)
    assert rc == 2 and "refused to load" in err

    run = tmp_path / "t2"
    train(tiny_cfg(synthetic_voc, run, iters=1))
    _evil_checkpoint(run / "last.pt", marker)
    rc, err = _cli(monkeypatch, capsys, "train", "--out", str(run), "--resume")
    assert rc == 2 and "refused to load" in err and str(run / "last.pt") in err
    assert not marker.exists()


def test_checkpoint_for_other_model_or_class_count_is_refused(synthetic_voc, tmp_path):
    six = random_head_checkpoint(tmp_path / "six.pt", num_classes=6)
    # --init re-initialises the score layers for another class count (tests/test_new_user_data.py);
    # where the checkpoint's head is used as it is (eval), the class count must match.
    from fcnseg.engine.evaluate import run_eval

    with pytest.raises(CheckpointError, match="six.pt: checkpoint has 6 classes but the data has 4"):
        run_eval(str(six), str(synthetic_voc), workers=0, device="cpu", progress=False)
    alex = tmp_path / "alex.pt"
    from fcnseg.checkpoint import save_checkpoint
    from fcnseg.models import build_model

    save_checkpoint(alex, build_model("fcn32s_alexnet", num_classes=4))
    with pytest.raises(CheckpointError, match="is for model 'fcn32s_alexnet'.*cannot initialise 'fcn8s_small'"):
        train(tiny_cfg(synthetic_voc, tmp_path / "b", init=str(alex), epochs=1))
    # resuming a run with another --model: refused, naming the setting
    run = tmp_path / "c"
    train(tiny_cfg(synthetic_voc, run, iters=1))
    with pytest.raises(ConfigError, match="model: run has 'fcn8s_small', now 'fcn16s_small'"):
        train(tiny_cfg(synthetic_voc, run, model="fcn16s_small", resume=True))
    with pytest.raises(ConfigError, match="lr: run has 0.01, now 0.5"):
        train(tiny_cfg(synthetic_voc, run, lr=0.5, resume=True))


# ----------------------------------------------------------------------------- (5) output dir


def test_run_dir_never_overwritten_without_flag(synthetic_voc, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(synthetic_voc, run, iters=1))
    before = (run / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds results; pass --overwrite"):
        train(tiny_cfg(synthetic_voc, run, iters=1, seed=1))
    assert (run / "best.pt").read_bytes() == before
    train(tiny_cfg(synthetic_voc, run, iters=2, seed=1, overwrite=True))
    assert len(read_jsonl(run / "steps.jsonl")) == 2  # old logs removed, not appended to


def test_unwritable_or_full_output_reported_before_work(synthetic_voc, tmp_path, monkeypatch):
    import fcnseg.data.datasets as datasets

    def no_work(*a, **k):
        raise AssertionError("dataset opened before the output directory was checked")

    monkeypatch.setattr(datasets, "open_dataset", no_work)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write to run directory .*file/run"):
        train(tiny_cfg(synthetic_voc, blocker / "run", epochs=1))

    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 2**20))
    with pytest.raises(ConfigError, match="only 1 MiB free"):
        train(tiny_cfg(synthetic_voc, tmp_path / "full", epochs=1))


# ----------------------------------------------------------------------------- (6) determinism


def test_seed_deterministic_runs_are_bit_identical(synthetic_voc, tmp_path):
    sds = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(tiny_cfg(synthetic_voc, tmp_path / name, iters=4, seed=seed, deterministic=True))
        sds.append(load_checkpoint(tmp_path / name / "last.pt")["state_dict"])
    assert state_dicts_equal(sds[0], sds[1])
    assert not state_dicts_equal(sds[0], sds[2])  # the seed matters
    assert not torch.are_deterministic_algorithms_enabled()  # global setting restored after train()


# ----------------------------------------------------------------------------- (7) clear errors


def test_unknown_data_or_model_is_one_line_error(synthetic_voc, tmp_path, monkeypatch, capsys):
    rc, err = _cli(monkeypatch, capsys, "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                   *TINY_ARGS)
    assert rc == 2 and err.count("\n") == 1 and "--data" in err and "no such directory" in err
    args = [a if a != "fcn8s_small" else "fcn8s_tiny" for a in TINY_ARGS]
    rc, err = _cli(monkeypatch, capsys, "train", "--data", str(synthetic_voc), "--out", str(tmp_path / "o"), *args)
    assert rc == 2 and err.count("\n") == 1 and "unknown --model 'fcn8s_tiny'" in err and "fcn8s_small" in err
    rc, err = _cli(monkeypatch, capsys, "eval", "--checkpoint", str(tmp_path / "x.pt"), "--data",
                   str(tmp_path / "nope"))
    assert rc == 2 and err.count("\n") == 1 and "no such directory" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch built without MKL")
def test_deterministic_cli_puts_mkl_in_reproducible_mode(synthetic_voc, tmp_path):
    """MKL's GEMMs may round differently depending on operand alignment unless its CNR mode is
    on; ``--deterministic`` must turn it on before the first MKL call (MKL_VERBOSE shows it)."""
    env = subprocess_env()
    env.pop("MKL_CBWR", None)
    env["MKL_VERBOSE"] = "1"
    runs = {}
    for flag in ("--deterministic", None):
        args = ["train", "--data", str(synthetic_voc), "--iters", "1", "--out", str(tmp_path / str(flag)),
                *TINY_ARGS] + ([flag] if flag else [])
        res = subprocess.run(cli_cmd(*args), env=env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stderr
        runs[flag] = {line.split("CNR:")[1].split()[0] for line in res.stdout.splitlines()
                      if line.startswith("MKL_VERBOSE") and "CNR:" in line}
    assert runs["--deterministic"] == {"AUTO,STRICT"}
    assert runs[None] == {"OFF"}  # the fast default is left alone without the flag


# What an API user gets: train(TrainConfig(deterministic=True)) in a process where MKL has already
# run (so MKL_CBWR, which MKL reads at its first call, comes too late), without MKL_CBWR in the
# environment (the suite's conftest sets it for its own process only). KEEP floats make each run's
# allocation history differ before training.
_API_DETERMINISM = textwrap.dedent("""
    import os, sys
    import torch
    from fcnseg.engine.config import TrainConfig
    from fcnseg.engine.train import train

    assert "MKL_CBWR" not in os.environ
    data, out, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kept = torch.empty(keep)
    a = torch.randn(67, 129)
    (a @ a.T).sum().item()  # MKL's first call: its reproducibility mode is fixed from here on
    train(TrainConfig(data=data, out=out, model="fcn8s_small", model_kwargs={"width": 8}, crop_size=32,
                      batch_size=2, workers=0, amp="off", device="cpu", progress=False, iters=6, seed=1,
                      deterministic=True))
""")


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch built without MKL")
def test_api_deterministic_training_after_mkl_ran_is_bit_identical(synthetic_voc, tmp_path):
    env = subprocess_env(threads=1)
    env.pop("MKL_CBWR", None)
    env["MKL_VERBOSE"] = "1"  # MKL logs each call with its reproducibility (CNR) mode
    steps, cnr = {}, {}
    for name, keep in (("a", 1), ("b", 100_003)):
        res = subprocess.run([sys.executable, "-c", _API_DETERMINISM, str(synthetic_voc), str(tmp_path / name),
                              str(keep)], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        steps[name] = (tmp_path / name / "steps.jsonl").read_text()
        modes = [line.split("CNR:")[1].split()[0] for line in res.stdout.splitlines()
                 if line.startswith("MKL_VERBOSE") and "CNR:" in line]
        assert len(modes) > 1  # MKL ran during training too, not only in the matmul before it
        cnr[name] = sorted(set(modes))
    print(f"MKL reproducibility mode seen by the API runs: {cnr}")
    assert len(read_jsonl(tmp_path / "a" / "steps.jsonl")) == 6
    assert steps["a"] == steps["b"]  # every loss and lr, bit for bit (repr-exact floats)


def test_validation_loader_workers_ignore_a_sigterm_to_the_group(synthetic_voc):
    """The in-training validation loader's workers, like the training loader's, survive a SIGTERM
    sent to the process group (the trainer alone handles it); a plain `fcnseg eval` loader's don't
    need to. Without this, a scheduler's kill landing during validation crashed the run."""
    import multiprocessing

    from fcnseg.data.datasets import open_dataset
    from fcnseg.data.transforms import eval_transforms
    from fcnseg.engine.evaluate import make_eval_loader

    ds = open_dataset(synthetic_voc, "val", transforms=eval_transforms())
    loader = make_eval_loader(ds, batch_size=1, workers=1, device=torch.device("cpu"), persistent=True)
    it = iter(loader)
    next(it)  # the worker is up and initialised
    (worker,) = multiprocessing.active_children()
    os.kill(worker.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert worker.is_alive()
    assert sum(1 for _ in it) == len(ds) - 1  # and the loader goes on
    assert sum(1 for _ in loader) == len(ds)  # next epoch, same persistent worker
    del it, loader
