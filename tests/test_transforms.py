"""fcnseg.data.transforms: paired geometry, padding values, normalisation, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fcnseg.data import transforms as T
from fcnseg.errors import ConfigError


def coord_pair(h: int = 40, w: int = 60):
    """Image whose pixel (y, x) stores R=y, G=x, and a mask that is a function of (y, x).

    After any crop/flip/pad the image tells where each output pixel came from, so the
    mask must equal ``label_of(R, G)`` wherever it is not padding.
    """
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([yy, xx, np.full_like(yy, 200)], axis=-1).astype(np.uint8)
    mask = label_of(yy, xx)
    return image, mask


def label_of(y, x):
    return ((np.asarray(y) // 5 + np.asarray(x) // 7) % 4).astype(np.uint8)


def assert_paired(image: np.ndarray, mask: np.ndarray) -> None:
    real = image[..., 2] == 200  # padding has B = 0
    np.testing.assert_array_equal(mask[real], label_of(image[..., 0], image[..., 1])[real])
    assert (mask[~real] == 255).all() and (image[~real] == 0).all()


def test_crop_and_flip_keep_image_and_mask_aligned():
    image, mask = coord_pair()
    t = T.Compose([T.RandomCrop(32, 32), T.RandomHorizontalFlip(0.5)])
    flipped = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out_i, out_m = t(image, mask)
        assert out_i.shape == (32, 32, 3) and out_m.shape == (32, 32)
        assert_paired(out_i, out_m)
        flipped += int(out_i[0, 0, 1] > out_i[0, -1, 1])  # x decreasing -> flipped
    assert 0 < flipped < 20  # both branches were exercised


def test_random_crop_pads_small_images_bottom_right():
    image, mask = coord_pair(10, 12)
    out_i, out_m = T.RandomCrop(16, 20)(image, mask)
    assert out_i.shape == (16, 20, 3)
    np.testing.assert_array_equal(out_i[:10, :12], image)  # only one position: no offset
    assert_paired(out_i, out_m)
    assert (out_m[10:] == 255).all() and (out_m[:, 12:] == 255).all()


def test_pad_if_needed_values():
    image = np.full((3, 4, 3), 9, np.uint8)
    mask = np.ones((3, 4), np.uint8)
    pi, pm = T.PadIfNeeded(5, 6)(image, mask)
    assert pi.shape == (5, 6, 3) and pm.shape == (5, 6)
    assert (pi[:3, :4] == 9).all() and (pm[:3, :4] == 1).all()
    assert (pi[3:] == 0).all() and (pi[:, 4:] == 0).all()
    assert (pm[3:] == 255).all() and (pm[:, 4:] == 255).all()
    same_i, same_m = T.PadIfNeeded(2, 2)(image, mask)  # already big enough: unchanged
    assert same_i.shape == (3, 4, 3) and same_m.shape == (3, 4)


def test_flip_is_exact_and_paired():
    image, mask = coord_pair(6, 8)
    fi, fm = T.RandomHorizontalFlip(p=1.0)(image, mask)
    np.testing.assert_array_equal(fi, image[:, ::-1])
    np.testing.assert_array_equal(fm, mask[:, ::-1])
    ni, nm = T.RandomHorizontalFlip(p=0.0)(image, mask)
    np.testing.assert_array_equal(ni, image)


def test_random_scale_sizes_and_mask_values():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mask = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(30, 40))
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        s = float(torch.rand((), generator=torch.Generator().manual_seed(seed)))
        factor = 0.5 + 1.5 * s
        si, sm = T.RandomScale(0.5, 2.0, generator=g)(image, mask)
        assert sm.shape == (round(30 * factor), round(40 * factor)) and si.shape[:2] == sm.shape
        assert set(np.unique(sm)) <= {0, 3, 7, 255}  # NEAREST: no blended labels


def test_scaled_image_still_matches_mask():
    # Blocks of constant label; image R = 30 * label. After scaling, away from block edges
    # (where bilinear blends) the image must still show its pixel's label: a misaligned,
    # flipped or transposed mask would not.
    labels = np.kron(np.random.default_rng(1).integers(0, 5, (6, 8)), np.ones((12, 12), np.int64)).astype(np.uint8)
    image = np.stack([labels * 30, np.zeros_like(labels), np.zeros_like(labels)], -1).astype(np.uint8)
    for lo in (0.6, 1.7):
        si, sm = T.RandomScale(lo, lo)(image, labels)
        m = torch.from_numpy(sm.astype(np.float32))[None, None]
        # interior: the 5x5 neighbourhood has a single label (max == min)
        interior = (torch.nn.functional.max_pool2d(m, 5, 1, 2) == -torch.nn.functional.max_pool2d(-m, 5, 1, 2))
        interior = interior[0, 0].numpy()
        agree = np.abs(si[..., 0].astype(int) - 30 * sm.astype(int)) <= 3
        assert interior.mean() > 0.2 and agree[interior].mean() > 0.99


def test_to_tensor_normalize_values():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = 255
    mask = np.array([[0, 1, 255], [2, 2, 2]], np.uint8)
    x, y = T.ToTensorNormalize()(image, mask)
    assert x.dtype == torch.float32 and x.shape == (3, 2, 3) and x.is_contiguous()
    assert y.dtype == torch.int64 and y.tolist() == [[0, 1, 255], [2, 2, 2]]
    mean, std = torch.tensor(T.IMAGENET_MEAN), torch.tensor(T.IMAGENET_STD)
    torch.testing.assert_close(x[:, 1, 1], -mean / std)
    torch.testing.assert_close(x[:, 0, 0], (1 - mean) / std)


def test_determinism_under_seed_and_generator():
    image, mask = coord_pair(50, 70)
    t = T.train_transforms((24, 32))
    torch.manual_seed(123)
    a = t(image, mask)
    torch.manual_seed(123)
    b = t(image, mask)
    torch.manual_seed(124)
    c = t(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    o1 = T.RandomCrop(8, 8, generator=g1)(image, mask)
    o2 = T.RandomCrop(8, 8, generator=g2)(image, mask)
    np.testing.assert_array_equal(o1[0], o2[0])


def test_train_and_eval_transforms_shapes():
    image, mask = coord_pair(30, 44)
    torch.manual_seed(0)
    x, y = T.train_transforms(16)(image, mask)
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)
    x, y = T.train_transforms((12, 20), scale=None, hflip=False)(image, mask)
    assert x.shape == (3, 12, 20)
    x, y = T.eval_transforms()(image, mask)
    assert x.shape == (3, 30, 44) and y.shape == (30, 44)  # full size at evaluation
    with pytest.raises(ConfigError, match="crop_size"):
        T.train_transforms((0, 4))
    with pytest.raises(ConfigError, match="RandomScale"):
        T.RandomScale(2.0, 1.0)


def test_pad_collate_pads_with_0_and_255():
    a = (torch.ones(3, 2, 3), torch.full((2, 3), 1, dtype=torch.int64))
    b = (torch.full((3, 4, 2), 2.0), torch.full((4, 2), 2, dtype=torch.int64))
    images, masks = T.pad_collate([a, b])
    assert images.shape == (2, 3, 4, 3) and masks.shape == (2, 4, 3) and masks.dtype == torch.int64
    assert (images[0, :, :2, :3] == 1).all() and (images[0, :, 2:] == 0).all()
    assert (masks[0, :2, :3] == 1).all() and (masks[0, 2:] == 255).all()
    assert (images[1, :, :, :2] == 2).all() and (images[1, :, :, 2:] == 0).all()
    assert (masks[1, :, 2:] == 255).all()
    with pytest.raises(ValueError, match="empty"):
        T.pad_collate([])


class _Coords(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        image, mask = coord_pair(30, 40)
        return T.train_transforms(16)(image, mask)


def test_dataloader_workers_are_deterministic():
    """Worker RNGs are seeded from the loader's seed: same torch seed, same batches."""
    def run():
        torch.manual_seed(7)
        loader = DataLoader(_Coords(), batch_size=2, num_workers=2, collate_fn=T.pad_collate)
        return [b for b in loader]

    first, second = run(), run()
    for (xa, ya), (xb, yb) in zip(first, second):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(first[0][0][0], first[0][0][1])  # items differ within a batch
