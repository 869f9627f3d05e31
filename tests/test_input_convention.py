"""Input conventions: the model converts the standard input to what its weights expect."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnseg.models import build_model
from fcnseg.models.input_convention import CONVENTIONS, ConvertInput

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])

# Independent references: what each convention's own preprocessing does to raw RGB pixels (H, W, 3).
REFERENCE = {
    "imagenet": lambda p: (p / 255.0 - IMAGENET_MEAN) / IMAGENET_STD,
    "caffe": lambda p: p[..., ::-1] - np.array([104.00699, 116.66877, 122.67891]),  # BGR minus mean
    "tf": lambda p: p / 127.5 - 1.0,
    "tf_lite": lambda p: (p - 127.0) / 128.0,
    "unit": lambda p: p / 255.0,
}


def _standard(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32, as the datasets and segment() make it."""
    x = (pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_conversion_matches_each_conventions_own_preprocessing(name):
    assert name in REFERENCE, "every convention needs an independent reference here"
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.float64)
    got = ConvertInput(name)(_standard(pixels))[0].numpy().transpose(1, 2, 0)
    want = REFERENCE[name](pixels)
    # float32 rounding of values up to ~150 in magnitude
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("geometry", ["modern", "caffe"])
def test_model_applies_its_convention_before_the_backbone_and_padding(geometry):
    torch.manual_seed(0)
    caffe = build_model("fcn8s_small", num_classes=3, geometry=geometry, input_convention="caffe", width=8)
    plain = build_model("fcn8s_small", num_classes=3, geometry=geometry, width=8)
    with torch.no_grad():  # non-zero 1x1 (score) layers, so the logits depend on the input
        for p in caffe.parameters():
            if p.dim() == 4 and p.shape[-1] == 1:
                p.normal_(std=0.05)
    plain.load_state_dict(caffe.state_dict())
    caffe.eval(), plain.eval()
    pixels = np.random.default_rng(1).integers(0, 256, (37, 45, 3)).astype(np.float64)
    caffe_values = torch.from_numpy(REFERENCE["caffe"](pixels).transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        got = caffe(_standard(pixels))       # the model converts the standard input itself
        want = plain(caffe_values)           # the same weights fed caffe values directly
    assert got.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_convention_is_recorded_in_checkpoints_but_not_in_state_dicts(tmp_path):
    import fcnseg
    from fcnseg.checkpoint import load_checkpoint, save_checkpoint

    model = build_model("fcn8s_small", num_classes=2, input_convention="caffe", width=8)
    assert model.fcn_config["input_convention"] == "caffe"
    assert not any(k.startswith("prepare_input") for k in model.state_dict())
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = fcnseg.load_model(tmp_path / "m.pt")
    assert loaded.prepare_input.convention == "caffe"
    # A checkpoint written before conventions were recorded means the standard input.
    ckpt = load_checkpoint(tmp_path / "m.pt")
    del ckpt["model"]["input_convention"]
    torch.save(ckpt, tmp_path / "old.pt")
    assert fcnseg.load_model(tmp_path / "old.pt").prepare_input.convention == "imagenet"


def test_default_is_the_standard_input_and_unknown_names_are_refused():
    assert build_model("fcn8s_small", num_classes=2, width=8).fcn_config["input_convention"] == "imagenet"
    with pytest.raises(ValueError, match="unknown input convention"):
        build_model("fcn8s_small", num_classes=2, width=8, input_convention="bgr255")
