"""Fixtures shared by the int8 tests (tests/test_int8.py, onnxruntime) and the OpenVINO cases
(tests/openvino_cases.py, NNCF): a small synthetic dataset and a net trained on it, so that
int8 is never judged on random weights. Import the fixtures into the test module to use them."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """Synthetic shapes, 48x64: 16 train images (calibration + held-out check) and 4 val."""
    from fcnseg.data.synthetic import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("shapes"), n_train=16, n_val=4, size=(48, 64),
                              num_classes=4, seed=1)


@pytest.fixture(scope="module")
def trained_ckpt(shapes_data, tmp_path_factory):
    """fcn8s_small w8 trained for 60 steps on ``shapes_data``: confident, structured predictions."""
    from fcnseg.engine.train import train
    from _engine_utils import tiny_cfg

    out = tmp_path_factory.mktemp("run") / "r"
    torch.set_num_threads(1)
    train(tiny_cfg(shapes_data, out, iters=60, crop_size=48, lr=0.05))
    return out / "last.pt"
