"""`--precision auto|fp32|bf16|int8`: auto's decision logic (injected flags and probe results, never
timed), the per-process cache, the override, and the runners' precision and prepared-model cache.

Tests never assert timings (speed targets live in benchmarks/); they check what is decided
from given measurements and that every path computes the right numbers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.cli import main
from fcnseg import precision as P
from fcnseg.errors import ConfigError
from fcnseg.infer import torch_runner
from fcnseg.infer.arrays import normalize
from fcnseg.infer.torch_runner import TorchRunner, prepared_model, weights_key
from tests._predict_utils import save_tiny_checkpoint, smooth_image, tiny_model

NO_BF16 = frozenset({"avx2", "avx512f", "avx512_vnni"})
AVX512_BF16 = NO_BF16 | {"avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}


def _never_probe():
    raise AssertionError("the probe must not run when the CPU has no native bf16")


@pytest.fixture
def unpinned(monkeypatch):
    """auto as users get it (conftest pins FCNSEG_PRECISION=fp32 for exact comparisons), fresh cache."""
    monkeypatch.delenv(P.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(P, "_CACHE", {})


def test_no_native_bf16_keeps_fp32_without_probing():
    choice = P.decide(NO_BF16, _never_probe)
    assert choice.precision == "fp32" and choice.speedup is None
    assert "no native bf16" in choice.reason


@pytest.mark.parametrize("flags", [AVX512_BF16, AMX])
@pytest.mark.parametrize("fp32, bf16, want", [
    (1.00, 0.70, "bf16"),   # 1.43x: the AVX512-BF16 EPYC training case -> switch
    (1.15, 1.00, "bf16"),   # exactly the margin -> switch
    (1.00, 0.90, "fp32"),   # 1.11x: within probe noise -> keep the exact path
    (1.00, 2.00, "fp32"),   # 0.5x: the Intel-without-AMX case -> fp32
])
def test_probe_decides_with_a_margin(flags, fp32, bf16, want):
    choice = P.decide(flags, lambda: {"fp32": fp32, "bf16": bf16}, workload="training")
    assert choice.precision == want
    assert choice.speedup == pytest.approx(fp32 / bf16)
    assert f"{fp32 / bf16:.2f}x" in choice.reason and "training" in choice.reason


def test_amx_flag_alone_does_not_pick_bf16():
    """An AMX host whose probe finds bf16 slower keeps fp32: the flag only nominates."""
    assert P.decide(AMX, lambda: {"fp32": 1.0, "bf16": 1.3}).precision == "fp32"


def test_override_wins_and_is_validated():
    choice = P.decide(NO_BF16, _never_probe, override="bf16")
    assert choice.precision == "bf16" and P.ENV_OVERRIDE in choice.reason
    with pytest.raises(ConfigError, match="FCNSEG_PRECISION='int8'"):
        P.decide(AMX, _never_probe, override="int8")


def test_auto_is_probed_once_per_process_and_workload(unpinned, monkeypatch):
    calls = []

    def fake_probe(workload, model=None, size=None):
        calls.append(workload)
        return {"fp32": 1.0, "bf16": 0.5 if workload == "training" else 1.0}

    monkeypatch.setattr(P, "cpu_flags", lambda: AVX512_BF16)
    monkeypatch.setattr(P, "probe_times", fake_probe)
    assert P.auto_precision("inference").precision == "fp32"
    assert P.auto_precision("training").precision == "bf16"
    assert P.auto_precision("inference").precision == "fp32"
    assert P.auto_precision("training").speedup == pytest.approx(2.0)
    assert calls == ["inference", "training"]
    monkeypatch.setenv(P.ENV_OVERRIDE, "bf16")
    assert P.auto_precision("inference").precision == "bf16"  # the override beats the cache


def test_cpu_flags_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\nbugs\t: x\n")
    assert P.cpu_flags(str(info)) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16"}
    assert P.reported_flags(P.cpu_flags(str(info))) == ["amx_bf16", "avx512_bf16", "avx512f"]
    assert P.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_resolve_precision_refuses_int8_for_a_torch_model_with_the_fix():
    with pytest.raises(ConfigError, match=r"fcnseg export .*--int8 --calib-data"):
        P.resolve_precision("int8")
    with pytest.raises(ConfigError, match="unknown --precision 'fp16'"):
        P.resolve_precision("fp16")
    assert P.resolve_precision("bf16") == ("bf16", None)


def test_real_probe_runs_and_auto_picks_a_torch_precision(unpinned):
    times = P.probe_times("inference", repeats=1, size=(16, 24))
    assert set(times) == {"fp32", "bf16"} and all(0 < t < 60 for t in times.values())
    times = P.probe_times("training", repeats=1, size=(16, 24))
    assert all(0 < t < 60 for t in times.values())
    choice = P.auto_precision("inference")
    assert choice.precision in P.TORCH_PRECISIONS and choice.reason.startswith(choice.precision)


def _reference_logits(model, image) -> np.ndarray:
    """Eager float64 logits: an independent reference for every precision."""
    ref = model.double()
    with torch.no_grad():
        out = ref(torch.from_numpy(normalize(image)).double())[0].numpy()
    model.float()
    return out


@pytest.mark.parametrize("precision, rel", [("fp32", 1e-5), ("bf16", 3e-2)])
def test_runner_precisions_match_a_float64_reference(precision, rel):
    model = tiny_model()
    image = smooth_image(40, 56, seed=3)
    ref = _reference_logits(model, image)
    runner = TorchRunner(model, precision=precision)
    got = runner(normalize(image))[0]
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= rel * scale
    agree = (got.argmax(0) == ref.argmax(0)).mean()
    assert agree >= (1.0 if precision == "fp32" else 0.97)
    if precision == "bf16":  # it really ran in bf16: not bit-equal to the fp32 path
        assert not np.array_equal(got, TorchRunner(model, precision="fp32")(normalize(image))[0])


def test_segment_reuses_the_prepared_model_until_the_weights_change(monkeypatch):
    model = tiny_model()
    image = smooth_image(36, 52, seed=1)
    built = []
    real = torch_runner.optimize_for_cpu_inference
    monkeypatch.setattr(torch_runner, "optimize_for_cpu_inference",
                        lambda *a, **k: built.append(1) or real(*a, **k))
    first = fcnseg.segment(model, image, precision="fp32", return_probs=True)[1]
    fcnseg.segment(model, image, precision="fp32")
    assert len(built) == 1  # the second call reused the prepared copy
    # in-place edit (weight surgery): the cache must notice, and the output must follow
    with torch.no_grad():
        model.score_fr.weight.mul_(-1.0)
    edited = fcnseg.segment(model, image, precision="fp32", return_probs=True)[1]
    assert len(built) == 2
    ref = _reference_logits(model, image)
    e = np.exp(ref - ref.max(0))
    np.testing.assert_allclose(edited, e / e.sum(0), atol=1e-5)
    assert np.abs(edited - first).max() > 1e-2  # the edit changed the answer
    # load_state_dict writes in place too
    model.load_state_dict(tiny_model(seed=5).state_dict())
    fcnseg.segment(model, image, precision="fp32")
    assert len(built) == 3
    fcnseg.segment(model, image, precision="bf16")  # another precision is its own entry
    assert len(built) == 4


def test_weights_key_tracks_in_place_writes_and_storage():
    model = tiny_model()
    k0 = weights_key(model)
    assert weights_key(model) == k0
    with torch.no_grad():
        model.upscore8.weight.add_(0.0)  # even a no-op write counts: values cannot be compared cheaply
    assert weights_key(model) != k0
    assert prepared_model(model, "fp32") is prepared_model(model, "fp32")


def test_predict_prints_autos_choice_once(tmp_path, monkeypatch, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "m.pt")
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    Image.fromarray(smooth_image(32, 48)).save(img)
    Image.fromarray(smooth_image(32, 48, seed=2)).save(img.with_name("b.png"))
    monkeypatch.setenv(P.ENV_OVERRIDE, "bf16")
    assert main(["predict", str(img.parent), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err  # a note on stderr: stdout keeps predict's results only
    assert err.count("precision bf16: forced by FCNSEG_PRECISION=bf16") == 1
    assert main(["predict", str(img), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o2"),
                 "--precision", "fp32"]) == 0
    assert "precision" not in capsys.readouterr().err  # an explicit choice needs no explanation


def test_model_probe_runs_the_model_itself_and_leaves_it_untouched(unpinned, monkeypatch):
    """auto for a given model probes that architecture (cached per parameter layout), never
    changes its weights, grads or BN statistics, and leaves the global RNG where it was."""
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    for workload in P.WORKLOADS:
        times = P.probe_times(workload, model=model, repeats=1, size=(32, 48))
        assert all(0 < t < 60 for t in times.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)
    calls = []
    monkeypatch.setattr(P, "cpu_flags", lambda: AVX512_BF16)
    monkeypatch.setattr(P, "probe_times",
                        lambda w, model=None, size=None: calls.append(model) or {"fp32": 1.0, "bf16": 0.5})
    P.auto_precision("inference", model)
    P.auto_precision("inference", tiny_model(seed=3))  # same architecture, other weights: cached
    P.auto_precision("inference", tiny_model(num_classes=4))  # another layout: probed
    assert calls[0] is model and len(calls) == 2


def test_probe_grows_the_input_until_compute_dominates(monkeypatch):
    """A net so fast at the start size that fixed costs dominate (EfficientNet-Lite0 at 96x128:
    bf16 0.97-1.15x there, 1.8x at 360x480) is probed again at doubled sides; a slow one is not."""
    sizes = []

    def fake(workload, *, model=None, size):  # fp32 seconds grow with the pixels; bf16 at 60%
        sizes.append(size)
        t = 0.01 * size[0] * size[1] / (96 * 128)
        return {"fp32": t, "bf16": 0.6 * t}

    monkeypatch.setattr(P, "probe_times", fake)
    times = P.probe_scaled("inference")
    assert sizes == [(96, 128), (192, 256)] and times["size"] == (192, 256)  # 0.01 s, then 0.04 s >= 0.03
    assert times["fp32"] == pytest.approx(0.04)
    choice = P.decide(frozenset({"avx512_bf16"}), lambda: times)
    assert choice.precision == "bf16" and "probe at 192x256" in choice.reason
    sizes.clear()
    P.probe_scaled("inference", size=(384, 512))  # already slow enough: one probe
    assert sizes == [(384, 512)]
    sizes.clear()
    monkeypatch.setattr(P, "probe_times",
                        lambda w, *, model=None, size: sizes.append(size) or {"fp32": 1e-4, "bf16": 1e-4})
    assert P.probe_scaled("training")["size"] == (384, 512)  # never beyond PROBE_MAX_SIDE
    assert sizes == [(96, 128), (192, 256), (384, 512)]
