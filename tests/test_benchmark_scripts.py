"""The benchmark scripts' own logic (not their figures): the ablation must run exactly the
CPU recipe with only the head, geometry or seed changed, and report what it measured."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import camvid_ablation as ablation  # noqa: E402
import camvid_cpu  # noqa: E402


@pytest.mark.parametrize("model", ["fcn32s_small", "fcn16s_small", "fcn8s_small"])
def test_ablation_uses_the_recipe_with_only_the_model_changed(model):
    args = ablation.recipe_for(model)
    assert args[args.index("--model") + 1] == model
    diff = [(a, b) for a, b in zip(camvid_cpu.RECIPE, args) if a != b]
    assert len(args) == len(camvid_cpu.RECIPE)
    # the model, validation every 10 epochs, and fp32 (the ablation's recorded figures are fp32)
    assert all(b in (model, "10", "off") for _, b in diff)
    assert args[args.index("--amp") + 1] == "off" and camvid_cpu.RECIPE[camvid_cpu.RECIPE.index("--amp") + 1] == "auto"


def test_ablation_variants_share_backbone_and_differ_as_named():
    models = {name: v[0] for name, v in ablation.VARIANTS.items()}
    assert {m.split("_")[1] for m in models.values()} == {"small"}
    assert models["fcn32s"].startswith("fcn32s") and models["fcn16s"].startswith("fcn16s")
    assert ablation.VARIANTS["fcn8s_caffe"][1] == "caffe" and ablation.VARIANTS["fcn8s"][1] == "modern"
    assert ablation.VARIANTS["fcn8s_staged"][2] is True


def test_unet_variant_is_the_fcn8s_run_with_only_the_model_changed(tmp_path):
    """Same data, augmentation, optimiser, seed, epochs and geometry as fcn8s: only the model differs."""
    assert ablation.VARIANTS["unet"] == ("unet_small", "modern", False)
    for seed in (0, 1):
        fcn = ablation.train_command("fcn8s", "DATA", tmp_path, 30, seed)
        unet = ablation.train_command("unet", "DATA", tmp_path, 30, seed)
        assert len(fcn) == len(unet)
        assert [(a, b) for a, b in zip(fcn, unet) if a != b] == [("fcn8s_small", "unet_small")]
        for flag, value in (("--epochs", "30"), ("--seed", str(seed)), ("--geometry", "modern"),
                            ("--crop-size", "288x384"), ("--optimizer", "adamw")):
            assert unet[unet.index(flag) + 1] == value
        assert "--stages" not in unet and "blocks=2,2,3,2" in unet and "width=32" in unet
    staged = ablation.train_command("fcn8s_staged", "DATA", tmp_path, 30, 0)
    assert staged[staged.index("--epochs") + 1] == "10"  # 3 stages x 10 epochs: the same budget


def _result(variant, seed, miou, model="fcn8s_small"):
    return {"variant": variant, "seed": seed, "model": model, "geometry": "modern", "epochs": 30,
            "train_minutes": 15.0, "gflops_360x480": 3.6, "class_names": ["a", "b"],
            "eval": {"miou": miou, "pixel_acc": 0.8, "mean_acc": 0.7, "fwiou": 0.6, "bf": 0.4,
                     "iou": [miou - 0.1, miou + 0.1]}}


def test_ablation_report_orders_variants_and_summarises_seeds(capsys, tmp_path):
    results = {"fcn8s@seed1": _result("fcn8s", 1, 0.52), "fcn32s": _result("fcn32s", 0, 0.48, "fcn32s_small"),
               "fcn8s": _result("fcn8s", 0, 0.54)}
    assert ablation.ordered(results) == ["fcn32s", "fcn8s", "fcn8s@seed1"]
    ablation.report(results, 30)
    out = capsys.readouterr().out
    assert "| fcn32s_small | modern | 0 | 3.5 |" not in out  # GFLOPs come from the result, not made up
    assert "| fcn32s_small | modern | 0 | 3.6 | 15.0 | 48.0 |" in out
    assert "| fcn8s | 2 | 53.0 | 2.0 |" in out  # mean of 54 and 52, spread 2
    assert "| fcn32s | 1 | 48.0 | - |" in out  # one run: no spread to report
    assert "| fcn8s@seed1 | 42.0 | 62.0 |" in out
    ablation.plot(results, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablation_report_and_comparison_include_unet(capsys, tmp_path):
    unet = {**_result("unet", 0, 0.56, "unet_small"), "gflops_360x480": 7.2, "train_minutes": 30.0}
    unet1 = {**_result("unet", 1, 0.58, "unet_small"), "gflops_360x480": 7.2, "train_minutes": 30.0}
    unet["eval"]["bf"] = unet1["eval"]["bf"] = 0.5
    results = {"unet@seed1": unet1, "unet": unet, "fcn8s": _result("fcn8s", 0, 0.54),
               "fcn8s@seed1": _result("fcn8s", 1, 0.52)}
    assert ablation.ordered(results) == ["fcn8s", "fcn8s@seed1", "unet", "unet@seed1"]
    ablation.report(results, 30)
    ablation.compare(results, "unet", "fcn8s")
    out = capsys.readouterr().out
    assert "| unet_small | modern | 1 | 7.2 | 30.0 | 58.0 |" in out
    assert "| unet | 2 | 57.0 | 2.0 |" in out
    assert "| miou | 53.0 | 57.0 | +4.0 |" in out  # means over both seeds
    assert "| bf | 40.0 | 50.0 | +10.0 |" in out
    assert "| IoU a | 43.0 | 47.0 | +4.0 |" in out
    assert "| GFLOPs 360x480 | 3.6 | 7.2 | 2.00x |" in out and "| train min | 15.0 | 30.0 | 2.00x |" in out
    ablation.compare({"unet": unet, "fcn8s@seed1": _result("fcn8s", 1, 0.52)}, "unet", "fcn8s")
    assert capsys.readouterr().out == ""  # no seed in common: nothing to compare
    ablation.plot(results, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_transfer_holdout_view_splits_train_by_sequence_and_never_touches_val(tmp_path):
    import camvid_transfer as transfer

    data = tmp_path / "camvid"
    sets = data / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClass"):
        (data / name).mkdir()
    (data / "class_names.txt").write_text("a\nb\n")
    train = ["0001TP_006690", "0001TP_006720", "0006R0_f00930", "0016E5_00390"]
    (sets / "train.txt").write_text("\n".join(train) + "\n")
    (sets / "val.txt").write_text("0016E5_07959\n")
    view = transfer.holdout_view(data, tmp_path / "out")
    vsets = view / "ImageSets" / "Segmentation"
    assert (vsets / "holdout.txt").read_text().split() == train[:2]  # the whole 0001TP sequence
    assert (vsets / "trainsub.txt").read_text().split() == train[2:]
    assert not (vsets / "val.txt").exists()  # the selection cannot read val
    assert (view / "JPEGImages").resolve() == (data / "JPEGImages").resolve()


def test_transfer_scratch_and_pretrained_differ_only_in_the_weights():
    import camvid_transfer as transfer

    kw = dict(train_split="train", val_split="val", val_every=5)
    pre = transfer.command(Path("d"), Path("r"), {"--bn": "frozen"}, 25, 30.0, pretrained=True, **kw)
    scr = transfer.command(Path("d"), Path("r"), {"--bn": "frozen"}, 25, 30.0, pretrained=False, **kw)
    i = pre.index("--backbone-weights")
    assert pre[i + 1] == "imagenet" and pre[:i] + pre[i + 2:] == scr
    assert pre[pre.index("--bn") + 1] == "frozen" and pre[pre.index("--max-minutes") + 1] == "30.0"


def test_cpu_recipe_time_to_accuracy_and_its_plot(tmp_path):
    rows = [{"epoch": 5.0, "time": 1000.0 + 120, "val": {"miou": 0.40}},
            {"epoch": 10.0, "time": 1000.0 + 300, "val": {"miou": 0.56}},
            {"epoch": 12.5, "time": 1000.0 + 330, "partial": True, "val": {"miou": None}},
            {"epoch": 15.0, "time": 1000.0 + 480, "val": {"miou": 0.50}}]
    curve = camvid_cpu.learning_curve(rows, launch=1000.0)
    assert curve == [(2.0, 5.0, 0.40), (5.0, 10.0, 0.56), (8.0, 15.0, 0.50)]  # rows without a score left out
    assert camvid_cpu.first_reaching(curve, 0.55) == (5.0, 10.0, 0.56)  # the first time, not the last
    assert camvid_cpu.first_reaching(curve, 0.60) is None
    runs = []
    for name, dtype in (("auto", "bfloat16"), ("fp32", None)):
        run = tmp_path / name
        run.mkdir()
        (run / "benchmark.json").write_text(json.dumps({"curve_minutes_epoch_miou": curve, "amp_dtype": dtype,
                                                         "eval": {"miou": 0.5}, "train_seconds": 600}))
        runs.append(run)
    assert camvid_cpu.plot_runs(runs, tmp_path / "c.png", 0.55) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_int8_selection_rule_is_the_most_agreeing_candidate():
    import int8_select

    rows = {"a": {"agreement": 0.991, "latency_ms": 10.0}, "b": {"agreement": 0.993, "latency_ms": 30.0},
            "c": {"agreement": 0.985, "latency_ms": 5.0}}
    assert int8_select.choose(rows) == "b"
    assert set(int8_select.ORT_CANDIDATES) >= {"minmax", "percentile+head"}
    from fcnseg.quantize import DEFAULT_CALIBRATE, DEFAULT_KEEP_FP32

    # the export's defaults are the candidate the selection chose (benchmarks/int8_select_*.json)
    assert int8_select.ORT_CANDIDATES["percentile+head"] == (DEFAULT_CALIBRATE, DEFAULT_KEEP_FP32)
    for model in ("lite0", "small"):
        record = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / f"int8_select_{model}.json").read_text())
        ort = {k: v for k, v in record["rows"].items() if k in int8_select.ORT_CANDIDATES}
        assert int8_select.choose(ort) == record["chosen_ort"] == "percentile+head"
