"""fcnseg.metrics: confusion-matrix scores, BF score, table formatting."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fcnseg.data.transforms import pad_collate
from fcnseg.metrics import BoundaryF1, ConfusionMatrix, format_table


def approx(v):
    return pytest.approx(v, abs=1e-12)


# ----------------------------------------------------------------------------- confusion matrix

# A 3-class 2x3 example, by hand:
#   target = [[0, 0, 0],     pred = [[0, 0, 1],
#             [1, 2, 2]]             [1, 2, 2]]
#   pairs (t, p): (0,0) (0,0) (0,1) (1,1) (2,2) (2,2)
#   matrix (rows = truth, cols = prediction):  [[2, 1, 0],
#                                               [0, 1, 0],
#                                               [0, 0, 2]]
#   diag tp = [2, 1, 2]; truth per class gt = [3, 1, 2]; predicted per class = [2, 2, 2]
#   pixel acc = 5/6;  acc = [2/3, 1, 1], mean acc = 8/9
#   union = gt + pred - tp = [3, 2, 2]; iou = [2/3, 1/2, 1]; mIoU = (2/3 + 1/2 + 1)/3 = 13/18
#   fwIoU = 3/6 * 2/3 + 1/6 * 1/2 + 2/6 * 1 = 1/3 + 1/12 + 1/3 = 3/4
TARGET = torch.tensor([[0, 0, 0], [1, 2, 2]])
PRED = torch.tensor([[0, 0, 1], [1, 2, 2]])


def test_hand_computed_scores():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    s = cm.compute()
    assert s["matrix"] == [[2, 1, 0], [0, 1, 0], [0, 0, 2]]
    assert s["pixel_acc"] == approx(5 / 6)
    assert s["acc"] == [approx(2 / 3), approx(1.0), approx(1.0)]
    assert s["mean_acc"] == approx(8 / 9)
    assert s["iou"] == [approx(2 / 3), approx(1 / 2), approx(1.0)]
    assert s["miou"] == approx(13 / 18)
    assert s["fwiou"] == approx(3 / 4)
    assert cm.matrix.dtype == torch.int64


def test_logits_and_batches_accepted():
    logits = torch.nn.functional.one_hot(PRED, 3).permute(2, 0, 1).float()[None]  # (1, 3, 2, 3)
    cm = ConfusionMatrix(3)
    cm.update(logits, TARGET[None])
    assert cm.compute()["matrix"] == [[2, 1, 0], [0, 1, 0], [0, 0, 2]]


def test_ignore_index_excluded():
    target = TARGET.clone()
    target[0, 2] = 255  # the only error pixel becomes "ignore"
    pred = PRED.clone()
    pred[0, 2] = 2      # whatever is predicted there does not count
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    s = cm.compute()
    assert s["matrix"] == [[2, 0, 0], [0, 1, 0], [0, 0, 2]]
    assert s["pixel_acc"] == 1.0 and s["miou"] == 1.0


def test_scores_come_from_one_matrix_not_batch_averages():
    # batch A: 4 pixels of class 0, all right -> mIoU 1 (class 1 absent, NaN, excluded)
    # batch B: 1 pixel of class 1 predicted 0 -> IoU0 = 0/1, IoU1 = 0/1 -> mIoU 0
    # per-batch average = 0.5; whole dataset: matrix [[4, 0], [1, 0]] -> IoU0 = 4/5, IoU1 = 0 -> 0.4
    a_t, a_p = torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long)
    b_t, b_p = torch.ones(1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1, dtype=torch.long)
    per_batch = []
    for t, p in ((a_t, a_p), (b_t, b_p)):
        one = ConfusionMatrix(2)
        one.update(p, t)
        per_batch.append(one.compute()["miou"])
    assert per_batch == [1.0, 0.0]
    cm = ConfusionMatrix(2)
    cm.update(a_p, a_t)
    cm.update(b_p, b_t)
    s = cm.compute()
    assert s["miou"] == approx(0.4) and s["miou"] != approx(sum(per_batch) / 2)
    assert s["iou"] == [approx(0.8), approx(0.0)]


def test_absent_classes_are_nan_and_excluded():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    s = cm.compute()
    assert math.isnan(s["iou"][2]) and math.isnan(s["acc"][3])
    assert s["iou"][:2] == [approx(1 / 2), approx(1 / 2)]
    assert s["miou"] == approx(0.5) and s["mean_acc"] == approx((0.5 + 1) / 2)
    empty = ConfusionMatrix(2).compute()
    assert math.isnan(empty["miou"]) and math.isnan(empty["pixel_acc"])


def test_matches_brute_force_on_random_data():
    g = torch.Generator().manual_seed(0)
    n = 5
    cm = ConfusionMatrix(n)
    ref = np.zeros((n, n), np.int64)
    for _ in range(3):
        t = torch.randint(0, n, (2, 7, 9), generator=g)
        t[torch.rand(t.shape, generator=g) < 0.2] = 255
        p = torch.randint(0, n, (2, 7, 9), generator=g)
        cm.update(p, t)
        for ti, pi in zip(t.flatten().tolist(), p.flatten().tolist()):
            if ti != 255:
                ref[ti, pi] += 1
    assert cm.compute()["matrix"] == ref.tolist()


def test_out_of_range_labels_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target has labels outside \[0, 3\) and 255: \[7\]"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"target .*: \[3\]"):  # 3*3+0 would hit the ignore bin
        cm.update(torch.tensor([0, 0]), torch.tensor([3, 255]))
    with pytest.raises(ValueError, match=r"target .*: \[-1\]"):
        cm.update(torch.tensor([0, 0]), torch.tensor([-1, 1]))
    with pytest.raises(ValueError, match="logits have 4 classes"):
        cm.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"pred has labels outside \[0, 3\)"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 3))
    assert cm.matrix is None  # nothing was counted by the refused updates


def test_reduce_once_under_distributed(monkeypatch):
    """reduce_() all-reduces exactly once (faked 2-process sum: the matrix doubles once)."""
    import torch.distributed as dist

    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    cm.reduce_()  # not initialised: no-op
    assert cm.compute()["matrix"][0] == [2, 1, 0]
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: (calls.append(1), t.mul_(2)))
    cm.reduce_()
    cm.reduce_()
    assert len(calls) == 1 and cm.compute()["matrix"][0] == [4, 2, 0]
    with pytest.raises(RuntimeError, match="after reduce_"):
        cm.update(PRED, TARGET)
    bf = BoundaryF1(3, tolerance_px=1)
    bf.update(PRED, TARGET)
    before = bf.compute()["bf_per_class"]
    bf.reduce_()
    bf.reduce_()
    assert len(calls) == 2 and bf.compute()["bf_per_class"] == before  # sum and count both doubled


# ----------------------------------------------------------------------------- BF score

def two_objects(shift2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """20x60 maps: class 1 at cols 10-19 in both; class 2 at cols 40-49 (gt), shifted in pred."""
    gt = torch.zeros(20, 60, dtype=torch.long)
    gt[:, 10:20] = 1
    gt[:, 40:50] = 2
    pred = gt.clone()
    pred[:, 40:50] = 0
    pred[:, 40 + shift2:50 + shift2] = 2
    return pred, gt


def test_bf_identical_maps_score_one():
    _, gt = two_objects(0)
    bf = BoundaryF1(3)
    bf.update(gt, gt)
    assert bf.compute()["bf_per_class"] == [1.0, 1.0, 1.0] and bf.compute()["bf"] == 1.0


def test_bf_shift_beyond_tolerance_known_value():
    # Boundaries (8-neighbourhood, image border excluded), tolerance 2 px:
    #   class 1: cols 10 and 19 in both maps -> F1 = 1
    #   class 2: gt cols 40, 49; pred (shift 6) cols 46, 55: nearest distances 3..6 > 2 -> F1 = 0
    #   class 0: gt cols 9, 20, 39, 50; pred cols 9, 20, 45, 56 -> half of each matched:
    #            P = R = 40/80 = 0.5 -> F1 = 0.5
    pred, gt = two_objects(6)
    bf = BoundaryF1(3, tolerance_px=2)
    bf.update(pred, gt)
    s = bf.compute()
    assert s["bf_per_class"] == [approx(0.5), approx(1.0), approx(0.0)]
    assert s["bf"] == approx(0.5)
    # A second image with only classes 0 and 1 (perfect): averages over images where present.
    gt2 = torch.zeros(20, 60, dtype=torch.long)
    gt2[5:15, 5:15] = 1
    bf.update(gt2[None], gt2[None])
    assert bf.compute()["bf_per_class"] == [approx(0.75), approx(1.0), approx(0.0)]


def test_bf_shift_within_tolerance_is_one():
    pred, gt = two_objects(1)
    bf = BoundaryF1(3, tolerance_px=2)
    bf.update(pred, gt)
    assert bf.compute()["bf"] == 1.0
    # default tolerance: 0.75% of the diagonal of 20x60 = 0.47 px -> a 1 px shift is a miss
    bf = BoundaryF1(3)
    bf.update(pred, gt)
    assert bf.compute()["bf_per_class"][2] == 0.0


def test_bf_ignores_void_bands_and_padding():
    # VOC-like: left class 0 | void band cols 18-21 | right class 1; bottom rows 30+ all void.
    gt = torch.zeros(40, 40, dtype=torch.long)
    gt[:, 22:] = 1
    gt[:, 18:22] = 255
    gt[30:] = 255
    pred = torch.zeros(40, 40, dtype=torch.long)
    pred[:, 20:] = 1             # the true edge, in the middle of the void band
    pred[34:39, 5:11] = 2        # junk deep inside the void: ignored
    bf = BoundaryF1(3, tolerance_px=2)
    bf.update(pred, gt)
    s = bf.compute()
    assert s["bf_per_class"][:2] == [1.0, 1.0] and math.isnan(s["bf_per_class"][2])
    # pad_collate'd batches (mask padded with 255): predictions deep in the padding do not
    # matter, and the score stays close to the unpadded image's (labels grow <= tol px into void).
    p2, g2 = two_objects(6)
    _, masks = pad_collate([(torch.zeros(3, 20, 60), g2), (torch.zeros(3, 31, 45), torch.zeros(31, 45, dtype=torch.long))])
    results = []
    for junk in (0, 2):
        preds = torch.zeros_like(masks)
        preds[0, :20] = p2
        preds[0, 20:] = p2[-1]  # the model's output below the image continues it ...
        preds[0, 26:] = junk    # ... then anything, > 2 * tol px deep in the padding
        preds[1, :, 51:] = junk
        bf = BoundaryF1(3, tolerance_px=2)
        bf.update(preds, masks)
        results.append(bf.compute()["bf_per_class"])
    assert results[0] == results[1]
    assert results[0] == [approx((0.5 + 1) / 2), approx(1.0), approx(0.0)]


def _reference_bf(pred: np.ndarray, gt: np.ndarray, n: int, tol: float) -> list[float]:
    """Brute force: boundary point sets, all pairwise distances (no void)."""
    def boundary(m):
        h, w = m.shape
        out = np.zeros_like(m)
        for y in range(h):
            for x in range(w):
                if m[y, x]:
                    nb = m[max(0, y - 1):y + 2, max(0, x - 1):x + 2]
                    out[y, x] = not nb.all()
        return np.argwhere(out)

    scores = []
    for c in range(n):
        if not ((gt == c).any() or (pred == c).any()):
            scores.append(float("nan"))
            continue
        bg, bp = boundary(gt == c), boundary(pred == c)
        if len(bg) == 0 and len(bp) == 0:
            scores.append(1.0)
            continue
        if len(bg) == 0 or len(bp) == 0:
            scores.append(0.0)
            continue
        d = np.sqrt(((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1))
        p, r = (d.min(1) <= tol).mean(), (d.min(0) <= tol).mean()
        scores.append(2 * p * r / (p + r) if p + r else 0.0)
    return scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = np.kron(rng.integers(0, 3, (4, 5)), np.ones((6, 6), np.int64))  # 24x30 blocks
    pred = np.roll(gt, shift=int(rng.integers(1, 4)), axis=int(rng.integers(0, 2)))
    pred[rng.random(pred.shape) < 0.03] = 1  # speckle
    tol = float(rng.uniform(1.0, 3.0))
    bf = BoundaryF1(3, tolerance_px=tol)
    bf.update(torch.from_numpy(pred), torch.from_numpy(gt))
    got = bf.compute()["bf_per_class"]
    ref = _reference_bf(pred, gt, 3, tol)
    np.testing.assert_allclose(got, ref, atol=1e-9)


# ----------------------------------------------------------------------------- table

def test_format_table():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    scores = cm.compute()
    text = format_table(scores, ["bg", "cat", "dog", "unicorn"])
    lines = text.splitlines()
    assert lines[0].split() == ["class", "IoU", "Acc"]
    assert lines[2].split() == ["bg", "66.7", "66.7"]
    assert lines[5].split() == ["unicorn", "-", "-"]  # absent class: undefined, not 0
    assert "mIoU 72.2" in text and "pixel acc 83.3" in text and "fwIoU 75.0" in text
    bf = BoundaryF1(4, tolerance_px=1)
    bf.update(PRED, TARGET)
    scores.update(bf.compute())
    with_bf = format_table(scores, ["bg", "cat", "dog", "unicorn"])
    assert with_bf.splitlines()[0].split() == ["class", "IoU", "Acc", "BF"] and "BF " in with_bf.splitlines()[-1]
    with pytest.raises(ValueError, match="2 class names for 4 classes"):
        format_table(scores, ["a", "b"])
