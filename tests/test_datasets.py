"""fcnseg.data.datasets and fcnseg.data.synthetic."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import random_pair, save_palette_mask
from fcnseg.constants import VOC_CLASSES
from fcnseg.data import image_files as io
from fcnseg.data.datasets import open_dataset
from fcnseg.data.folder_pairs import FolderPairs
from fcnseg.data.voc import VOCSegmentation
from fcnseg.data.synthetic import make_synthetic_voc
from fcnseg.constants import IMAGENET_MEAN, IMAGENET_STD
from fcnseg.data.transforms import pad_collate
from fcnseg.errors import ConfigError, DataError


def items(n, prefix="img", h=24, w=32, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"{prefix}{i}", *random_pair(rng, h, w, num_classes)) for i in range(n)]


# ----------------------------------------------------------------------------- VOC

def test_voc_basic(synthetic_voc):
    ds = VOCSegmentation(synthetic_voc, "train")
    assert len(ds) == 6 and ds.ids == [f"train_{i:05d}" for i in range(6)]
    assert ds.num_classes == 4 and ds.class_names == ["background", "circle", "rectangle", "triangle"]
    assert len(ds.palette) == 256 and ds.palette[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    assert ds.image_path(0).name == "train_00000.jpg" and ds.mask_path(-1).name == "train_00005.png"
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 48)
    assert y.dtype == torch.int64 and y.shape == (32, 48)
    image, mask = ds.load_pair(0)
    assert image.dtype == np.uint8 and image.shape == (32, 48, 3) and mask.shape == (32, 48)
    # default transform = ImageNet normalisation of the raw pair
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(x, expected)
    assert torch.equal(y, torch.from_numpy(mask).long())
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 255}
    with pytest.raises(IndexError):
        ds[6]
    assert len(VOCSegmentation(synthetic_voc, "val")) == 3


def test_voc_default_classes_and_data_palette(tmp_path, make_voc):
    pal = [(3 * i + k) % 256 for i in range(256) for k in range(3)]
    make_voc(tmp_path, {"train": items(2)}, palette=pal)  # entry i = (3i, 3i+1, 3i+2) mod 256
    ds = VOCSegmentation(tmp_path)
    assert ds.num_classes == 21 and ds.class_names == VOC_CLASSES
    assert ds.palette[1] == (3, 4, 5) and ds.palette[255] == tuple(pal[765:768])


def test_voc_nested_devkit_root(tmp_path, make_voc):
    make_voc(tmp_path / "VOCdevkit" / "VOC2012", {"train": items(1)})
    ds = open_dataset(tmp_path, "train")
    assert isinstance(ds, VOCSegmentation) and ds.root == tmp_path / "VOCdevkit" / "VOC2012"


def test_voc_missing_id_names_split_id_and_path(tmp_path, make_voc):
    make_voc(tmp_path, {"train": items(2)})
    split = tmp_path / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text("img0\nimg1\nghost\n")
    with pytest.raises(DataError) as e:
        VOCSegmentation(tmp_path, "train")
    msg = str(e.value)
    assert str(split) in msg and "'ghost'" in msg and str(tmp_path / "JPEGImages" / "ghost.jpg") in msg
    split.write_text("img0\nimg1\n")
    (tmp_path / "SegmentationClass" / "img1.png").unlink()
    with pytest.raises(DataError, match=r"lists id 'img1' but its mask .*img1\.png is missing"):
        VOCSegmentation(tmp_path, "train")


def test_voc_missing_root_and_split(tmp_path, make_voc):
    with pytest.raises(DataError, match=r"nowhere does not exist.*JPEGImages"):
        VOCSegmentation(tmp_path / "nowhere")
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(DataError) as e:
        VOCSegmentation(tmp_path)
    msg = str(e.value)
    assert "missing SegmentationClass/, ImageSets/Segmentation/" in msg
    assert "found: JPEGImages/, stray.txt" in msg
    make_voc(tmp_path, {"train": items(1), "val": items(1)})
    with pytest.raises(DataError, match=r"test\.txt not found; available splits .*: train, val"):
        VOCSegmentation(tmp_path, "test")


def test_size_mismatch_names_both_files(tmp_path, make_voc):
    make_voc(tmp_path, {"train": items(1)})
    save_palette_mask(np.zeros((10, 10), np.uint8), tmp_path / "SegmentationClass" / "img0.png")
    ds = VOCSegmentation(tmp_path)
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    assert "img0.jpg is 32x24" in msg and "img0.png is 10x10" in msg and "size mismatch" in msg


def test_labels_checked_against_class_names(tmp_path, make_voc):
    make_voc(tmp_path, {"train": items(1, num_classes=3)}, class_names=["a", "b"])
    ds = VOCSegmentation(tmp_path)
    assert ds.num_classes == 2
    with pytest.raises(DataError, match=r"img0\.png has labels outside \[0, 2\).*values \[2\]"):
        ds[0]
    (tmp_path / "class_names.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match=r"repeats \['a'\]"):
        VOCSegmentation(tmp_path)


def test_sbd_train_aug(tmp_path, make_voc):
    scipy_io = pytest.importorskip("scipy.io")
    voc = make_voc(tmp_path / "voc", {"train": items(2, "a"), "val": items(1, "v")})
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "img").mkdir()
    rng = np.random.default_rng(3)
    for id_ in ["a1", "v0", "s0", "s1"]:
        image, mask = random_pair(rng, 20, 28, 21)
        Image.fromarray(image).save(sbd / "img" / f"{id_}.jpg")
        scipy_io.savemat(sbd / "cls" / f"{id_}.mat", {"GTcls": {"Segmentation": mask}})
    (sbd / "train.txt").write_text("a1\nv0\ns0\n")
    (sbd / "val.txt").write_text("s1\n")
    ds = VOCSegmentation(voc, "train", sbd_root=tmp_path / "benchmark_RELEASE")
    # VOC train + SBD (train+val) - VOC val; VOC's own annotation wins for a1
    assert ds.ids == ["a0", "a1", "s0", "s1"]
    assert ds.mask_path(1).suffix == ".png" and ds.mask_path(2).name == "s0.mat"
    assert ds.image_path(2) == sbd / "img" / "s0.jpg"
    image, mask = ds.load_pair(3)
    assert image.shape == (20, 28, 3) and mask.shape == (20, 28)
    x, y = ds[2]
    assert y.shape == (20, 28) and int(y.max()) < 21
    assert VOCSegmentation(voc, "train", sbd_root=sbd, sbd_splits=("train",)).ids == ["a0", "a1", "s0"]
    assert VOCSegmentation(voc, "val", sbd_root=sbd).ids == ["v0"]  # val never gets SBD
    (sbd / "val.txt").write_text("s1\nmissing\n")
    with pytest.raises(DataError, match=r"val\.txt lists id 'missing'"):
        VOCSegmentation(voc, "train", sbd_root=sbd)
    with pytest.raises(DataError, match="has no cls/ folder"):
        VOCSegmentation(voc, "train", sbd_root=tmp_path / "voc")


# ----------------------------------------------------------------------------- folders

def write_folder(root, pairs, sub=""):
    for name, image, mask in pairs:
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / sub / f"{name}.jpg")
        save_palette_mask(mask, root / "masks" / sub / f"{name}.png")
    return root


def test_folder_pairs_infers_num_classes(tmp_path):
    pairs = items(3, num_classes=3)
    pairs[1][2][0, 0] = 4  # largest label anywhere -> 5 classes
    pairs[2][2][0, 1] = 255
    write_folder(tmp_path, pairs)
    ds = FolderPairs(tmp_path)
    assert ds.ids == ["img0", "img1", "img2"] and ds.num_classes == 5
    assert ds.class_names == [f"class_{i}" for i in range(5)]
    x, y = ds[1]
    assert x.shape == (3, 24, 32) and int(y[0, 0]) == 4
    (tmp_path / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(6)))
    assert FolderPairs(tmp_path).num_classes == 6
    assert FolderPairs(tmp_path, class_names=["a", "b", "c", "d", "e", "f", "g"]).num_classes == 7


def test_folder_pairs_scan_is_cached(tmp_path, monkeypatch):
    write_folder(tmp_path, items(3, num_classes=3))
    assert FolderPairs(tmp_path).num_classes >= 1
    calls = []
    real = io.read_mask
    monkeypatch.setattr(io, "read_mask", lambda *a, **k: (calls.append(a), real(*a, **k))[1])
    FolderPairs(tmp_path)
    assert calls == []  # second dataset on the same masks: no re-scan
    save_palette_mask(np.full((24, 32), 6, np.uint8), tmp_path / "masks" / "img0.png")
    assert FolderPairs(tmp_path).num_classes == 7 and len(calls) == 3  # changed files: re-scanned


def test_folder_pairs_splits_and_errors(tmp_path):
    write_folder(tmp_path, items(2, "t"), "train")
    write_folder(tmp_path, items(1, "v"), "val")
    assert FolderPairs(tmp_path, "train").ids == ["t0", "t1"]
    val = open_dataset(tmp_path, "val")
    assert isinstance(val, FolderPairs) and val.ids == ["v0"]
    assert val.num_classes == FolderPairs(tmp_path, "train").num_classes  # scanned over all splits
    with pytest.raises(DataError, match=r"no split 'test': expected images/test/"):
        FolderPairs(tmp_path, "test")
    Image.fromarray(items(1)[0][1]).save(tmp_path / "images" / "train" / "lonely.png")
    with pytest.raises(DataError, match=r"1 images in .*train have no mask .*: lonely\.png"):
        FolderPairs(tmp_path, "train")


def test_folder_pairs_split_file_and_duplicates(tmp_path):
    write_folder(tmp_path, items(3))
    (tmp_path / "train.txt").write_text("img0\nimg2\n")
    assert FolderPairs(tmp_path, "train").ids == ["img0", "img2"]
    (tmp_path / "train.txt").write_text("img0\nimg9\n")
    with pytest.raises(DataError, match=r"lists 1 ids with no image .*img9"):
        FolderPairs(tmp_path, "train")
    Image.fromarray(items(1)[0][1]).save(tmp_path / "images" / "img0.png")
    with pytest.raises(DataError, match=r"share the stem 'img0'"):
        FolderPairs(tmp_path)


def test_open_dataset_detection(tmp_path, synthetic_voc):
    assert isinstance(open_dataset(synthetic_voc, "val", sbd_root=None), VOCSegmentation)
    with pytest.raises(ConfigError, match="class_names"):
        open_dataset(synthetic_voc, class_names=["a"])
    (tmp_path / "random").mkdir()
    with pytest.raises(DataError) as e:
        open_dataset(tmp_path / "random")
    msg = str(e.value)
    assert "accepted layouts" in msg and "JPEGImages" in msg and "images/" in msg and "masks/" in msg
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "absent")


def test_dataloader_with_pad_collate(synthetic_voc):
    ds = open_dataset(synthetic_voc, "train")
    images, masks = next(iter(DataLoader(ds, batch_size=3, collate_fn=pad_collate)))
    assert images.shape == (3, 3, 32, 48) and masks.shape == (3, 32, 48) and masks.dtype == torch.int64


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_valid(tmp_path):
    def digest(root):
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(root)).encode() + p.read_bytes())
        return h.hexdigest()

    a = make_synthetic_voc(tmp_path / "a", n_train=4, n_val=2, size=(40, 56), num_classes=9, seed=3)
    b = make_synthetic_voc(tmp_path / "b", n_train=4, n_val=2, size=(40, 56), num_classes=9, seed=3)
    c = make_synthetic_voc(tmp_path / "c", n_train=4, n_val=2, size=(40, 56), num_classes=9, seed=4)
    assert digest(a) == digest(b) != digest(c)
    ds = VOCSegmentation(a, "train")
    assert ds.num_classes == 9 and ds.class_names[1:3] == ["circle", "rectangle"]
    seen = set()
    for i in range(len(ds)):
        mask = io.read_mask(ds.mask_path(i), 9)
        assert mask.shape == (40, 56)
        seen |= set(np.unique(mask).tolist())
        assert (mask == 255).any()  # VOC-like ignore band around objects
    assert 0 in seen and len(seen - {0, 255}) >= 2
    with pytest.raises(ConfigError, match="num_classes"):
        make_synthetic_voc(tmp_path / "d", num_classes=12)


def test_synthetic_colours_identify_classes(tmp_path):
    """Object pixels are near their class colour: the demo's classes are learnable."""
    from fcnseg.data.synthetic import SHAPES

    root = make_synthetic_voc(tmp_path, n_train=6, n_val=0, size=(64, 64), num_classes=6, seed=1)
    ds = VOCSegmentation(root)
    for i in range(len(ds)):
        image, mask = ds.load_pair(i)
        for c in set(np.unique(mask).tolist()) - {0, 255}:
            mean = image[mask == c].reshape(-1, 3).mean(0)
            assert np.abs(mean - np.array(SHAPES[c][1])).max() < 45


# ----------------------------------------------------------------------------- real data

@pytest.mark.realdata
def test_camvid_real_data(camvid_root):
    train = open_dataset(camvid_root, "train")
    val = open_dataset(camvid_root, "val")
    assert len(train) == 367 and len(val) == 101
    names = [line.strip() for line in (camvid_root / "class_names.txt").read_text().splitlines() if line.strip()]
    assert train.num_classes == 11 and train.class_names == names
    flat = [c for rgb in train.palette for c in rgb]
    for path in (train.mask_path(0), val.mask_path(100)):
        mask_palette = Image.open(path).getpalette()
        assert len(mask_palette) == 768 and flat == mask_palette
    for ds, i in ((train, 0), (train, 366), (val, 50)):
        x, y = ds[i]
        assert x.shape == (3, 360, 480) and x.dtype == torch.float32
        assert y.shape == (360, 480) and y.dtype == torch.int64
        labels = set(torch.unique(y).tolist())
        assert labels <= set(range(11)) | {255} and len(labels - {255}) >= 3
