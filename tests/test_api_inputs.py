"""``fcnseg.segment`` with a list of images (a list of results) and with a missing path
(a message about the file, not about a dataset layout)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import fcnseg
from _predict_utils import smooth_image, tiny_model, write_image
from fcnseg.errors import DataError


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_segment_a_list_gives_the_single_results(model, tmp_path):
    a = smooth_image(37, 53, seed=1)
    b = smooth_image(20, 90, seed=2)  # another size: images are not stacked
    path = write_image(tmp_path / "c.png", smooth_image(16, 16, seed=3))
    singles = [fcnseg.segment(model, x) for x in (a, b, path)]
    assert len({s.shape for s in singles}) == 3
    got = fcnseg.segment(model, [a, Image.fromarray(b), str(path)])
    assert isinstance(got, list) and len(got) == 3
    for g, s in zip(got, singles):
        np.testing.assert_array_equal(g, s)
    # a (B, H, W, 3) array and a tuple; with probabilities
    batch = np.stack([a, a])
    got = fcnseg.segment(model, batch)
    assert len(got) == 2 and all(np.array_equal(g, singles[0]) for g in got)
    labels, probs = fcnseg.segment(model, (a,), return_probs=True)[0]
    np.testing.assert_array_equal(labels, singles[0])
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_nested_list_image_is_still_one_image(model):
    # a list of pixel rows is ONE image (here refused as int64), not a list of images
    with pytest.raises(ValueError, match="image array must be uint8 0..255, got int64"):
        fcnseg.segment(model, smooth_image(12, 14, seed=4).tolist())


def test_wrong_shape_and_empty_list_say_what_to_do(model):
    with pytest.raises(ValueError, match=r"got shape \(7,\); for several images pass a list"):
        fcnseg.segment(model, np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match="empty list"):
        fcnseg.segment(model, [])


def test_missing_path_message_fits_the_caller(model, tmp_path, synthetic_voc):
    missing = tmp_path / "nothere.jpg"
    with pytest.raises(DataError) as e:
        fcnseg.segment(model, str(missing))
    assert str(e.value) == f"image file not found: {missing}"
    # a dataset's missing file still points at the layout
    import shutil

    from fcnseg.data.datasets import open_dataset

    root = tmp_path / "voc"
    shutil.copytree(synthetic_voc, root)
    ds = open_dataset(root, "val")
    ds.image_path(0).unlink()
    with pytest.raises(DataError, match=r"image file not found: .*; check the path and the dataset layout"):
        ds[0]
