"""Segmentation scores from one confusion matrix accumulated over the whole dataset.

:class:`ConfusionMatrix` counts ``(ground truth, prediction)`` pixel pairs for every image
of the evaluation set; every score (pixel accuracy, mean accuracy, per-class IoU, mIoU,
frequency-weighted IoU; Long et al. 2015, sec. 5) is derived from that single matrix at
the end. Averaging per-batch scores would weight small batches and absent classes wrongly.
Under DDP, :meth:`ConfusionMatrix.reduce_` sums the per-process matrices once.

:class:`BoundaryF1` is the BF score of Csurka et al. (BMVC 2013): per image and class,
the F1 of boundary precision/recall with a distance tolerance (default 0.75% of the
image diagonal), averaged per class over the images where the class appears.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist

from fcnseg.constants import IGNORE_INDEX


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over DDP processes (moved to CUDA for NCCL); returns the reduced tensor."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        buf = t.cuda()
        dist.all_reduce(buf)
        return buf.to(t.device)
    dist.all_reduce(t)
    return t


class ConfusionMatrix:
    """``matrix[t, p]`` = number of pixels with ground truth ``t`` predicted as ``p``.

    Pixels whose target equals ``ignore_index`` are not counted. Counts are int64.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.device = torch.device(device) if device is not None else None
        self.matrix: torch.Tensor | None = None  # (N, N) int64, allocated on the first update's device
        self._reduced = False

    def reset(self) -> None:
        """Forget all counts."""
        self.matrix, self._reduced = None, False

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch.

        ``pred``: class indices ``(B, H, W)`` / ``(H, W)``, or logits ``(B, C, H, W)`` (argmax
        over C is taken). ``target``: ``(B, H, W)`` / ``(H, W)`` class indices, ignore_index allowed.
        """
        if self._reduced:
            raise RuntimeError("ConfusionMatrix.update after reduce_(): counts would be summed twice; "
                               "call reset() first")
        n = self.num_classes
        pred_in_range = False
        if pred.dim() == target.dim() + 1:
            if pred.shape[-3] != n:
                raise ValueError(f"logits have {pred.shape[-3]} classes, the matrix {n}")
            pred, pred_in_range = pred.max(dim=-3).indices, True  # (B, C, H, W) -> (B, H, W)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        device = self.device or target.device
        p = pred.to(device=device, dtype=torch.int64).reshape(-1)
        t = target.to(device=device, dtype=torch.int64).reshape(-1)
        if not pred_in_range and p.numel():
            pmin, pmax = torch.aminmax(p)
            if pmin < 0 or pmax >= n:
                raise ValueError(f"pred has labels outside [0, {n}): range [{int(pmin)}, {int(pmax)}]")
        valid = t != self.ignore_index
        # Ignored pixels go to the extra bin n*n, so no boolean indexing (a slow copy) is needed.
        idx = torch.where(valid, t * n + p, n * n)
        try:
            counts = torch.bincount(idx, minlength=n * n + 1)  # the one pass over the pixels
        except RuntimeError:  # negative index: a negative target label
            counts = None
        # A target >= n lands beyond n*n, or exactly on the ignore bin; catch both.
        if counts is None or counts.numel() > n * n + 1 or int(counts[n * n]) != int((~valid).sum()):
            bad = torch.unique(t[valid & ((t < 0) | (t >= n))])[:10].tolist()
            raise ValueError(f"target has labels outside [0, {n}) and {self.ignore_index}: {bad}")
        if self.matrix is None:
            self.matrix = torch.zeros((n, n), dtype=torch.int64, device=device)
        self.matrix += counts[: n * n].reshape(n, n)

    def reduce_(self) -> None:
        """Sum the matrices of all DDP processes (once; no-op without torch.distributed)."""
        if self._reduced or not (dist.is_available() and dist.is_initialized()):
            return
        if self.matrix is None:  # a process with no data still has to join the collective
            self.matrix = torch.zeros((self.num_classes,) * 2, dtype=torch.int64, device=self.device)
        self.matrix = _all_reduce_sum(self.matrix)
        self._reduced = True

    def compute(self) -> dict:
        """All scores from the accumulated matrix.

        Returns ``pixel_acc``, ``mean_acc`` (over classes present in the ground truth),
        ``acc`` and ``iou`` (per class; NaN when undefined: no ground truth for ``acc``,
        absent from both ground truth and prediction for ``iou``), ``miou`` (NaNs excluded),
        ``fwiou`` (IoU weighted by ground-truth frequency), and ``matrix`` (list of lists).
        """
        n = self.num_classes
        m = (self.matrix if self.matrix is not None else torch.zeros((n, n), dtype=torch.int64)).cpu()
        md = m.double()
        tp = md.diag()
        gt = md.sum(1)    # pixels per ground-truth class
        pred = md.sum(0)  # pixels per predicted class
        total = md.sum()
        union = gt + pred - tp
        nan = float("nan")
        acc = [float(tp[c] / gt[c]) if gt[c] > 0 else nan for c in range(n)]
        iou = [float(tp[c] / union[c]) if union[c] > 0 else nan for c in range(n)]
        if total > 0:
            pixel_acc = float(tp.sum() / total)
            # Classes with gt > 0 have union > 0, so their IoU is defined.
            fwiou = float(sum(gt[c] / total * iou[c] for c in range(n) if gt[c] > 0))
        else:
            pixel_acc = fwiou = nan
        return {
            "pixel_acc": pixel_acc,
            "mean_acc": _nanmean(acc),
            "acc": acc,
            "iou": iou,
            "miou": _nanmean(iou),
            "fwiou": fwiou,
            "matrix": m.tolist(),
        }


def _shift_into(out: torch.Tensor, src: torch.Tensor, dy: int, dx: int, op) -> None:
    """``out[..., y, x] = op(out[..., y, x], src[..., y + dy, x + dx])`` where in bounds.

    Shifted slices instead of max-pool/conv: elementwise ops on (K, H, W) are several times
    faster on CPU, and pixels outside the image never contribute (the border is no edge).
    """
    h, w = src.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return
    oy, sy = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    ox, sx = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    out[..., oy, ox] = op(out[..., oy, ox], src[..., sy, sx])


def _square3(x: torch.Tensor, op) -> torch.Tensor:
    """3x3 neighbourhood reduction (OR for bool, max for labels), separable: 4 shifted ops."""
    row = x.clone()
    _shift_into(row, x, 0, 1, op)
    _shift_into(row, x, 0, -1, op)
    out = row.clone()
    _shift_into(out, row, 1, 0, op)
    _shift_into(out, row, -1, 0, op)
    return out


def _boundaries(masks: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Boundary pixels of binary masks (K, H, W) bool: in the mask, with an 8-neighbour outside it.

    With ``known`` (H, W) bool, only known outside pixels make a boundary (unknown = void).
    Pixels beyond the image border are not "outside": the border is not a boundary.
    """
    outside = ~masks if known is None else (~masks & known)
    return masks & _square3(outside, torch.logical_or)


def _fill_void(label: torch.Tensor, valid: torch.Tensor, steps: int) -> torch.Tensor:
    """Grow labels into void pixels by up to ``steps`` pixels; -1 where still unknown.

    label (H, W) int64, valid (H, W) bool. VOC's thin void bands at object edges are split
    between their two sides, so ground-truth boundaries sit where the true edge is; deep void
    (unlabelled objects, batch padding) stays unknown and creates no boundary.
    """
    lab = torch.where(valid, label + 1, torch.zeros_like(label))  # 0 = unknown
    for _ in range(steps):
        unknown = lab == 0
        if not bool(unknown.any()):
            break
        lab = torch.where(unknown, _square3(lab, torch.maximum), lab)  # take a labelled neighbour
    return lab - 1


def _dilate(points: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels within Euclidean ``radius`` of any True pixel of ``points`` (K, H, W) bool.

    The disk is a union of horizontal runs: dilate each row by the run's half-width
    (computed incrementally), then OR the rows shifted by dy -- about 4 * radius ops.
    """
    r = int(math.floor(radius + 1e-9))
    if r < 1:
        return points
    rows = [points]  # rows[k] = horizontal dilation by k
    for k in range(1, r + 1):
        nxt = rows[-1].clone()
        _shift_into(nxt, points, 0, k, torch.logical_or)
        _shift_into(nxt, points, 0, -k, torch.logical_or)
        rows.append(nxt)
    out = torch.zeros_like(points)
    for dy in range(-r, r + 1):
        half = int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9))
        _shift_into(out, rows[half], dy, 0, torch.logical_or)
    return out


class BoundaryF1:
    """BF score accumulator (Csurka et al. 2013), per class, over a dataset.

    For each image and each class present in its ground truth or prediction: boundary
    precision P (fraction of predicted boundary pixels within ``tolerance`` of a ground
    truth boundary pixel), recall R (the converse), F1 = 2PR/(P+R) (1 when both have no
    boundary, 0 when only one has). A class's BF is the mean of its per-image F1 over the
    images where it appears; ``bf`` is the mean over classes. ``tolerance_px`` fixes the
    tolerance; by default it is ``tolerance_frac`` (0.75%) of each image's diagonal.

    Ignored pixels (target == ``ignore_index``): the ground truth's labels are grown into
    void by up to the tolerance (VOC's thin void bands at object edges are split between
    the two sides, putting the boundary at the true edge); void deeper than that (void
    objects, batch padding) is unknown: it makes no ground-truth boundary and predicted
    boundaries inside it are dropped. Classes are those in non-void pixels. In padded
    batches the default tolerance comes from the padded size: for exact per-image scores
    pass each image cropped to its own size (or a fixed ``tolerance_px``).
    """

    def __init__(self, num_classes: int, tolerance_px: float | None = None,
                 tolerance_frac: float = 0.0075, ignore_index: int = IGNORE_INDEX):
        self.num_classes = int(num_classes)
        self.tolerance_px, self.tolerance_frac = tolerance_px, tolerance_frac
        self.ignore_index = ignore_index
        self.sum = torch.zeros(self.num_classes, dtype=torch.float64)    # sum of per-image F1
        self.count = torch.zeros(self.num_classes, dtype=torch.float64)  # images where class appears
        self._reduced = False

    def reset(self) -> None:
        self.sum.zero_()
        self.count.zero_()
        self._reduced = False

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add images: ``pred``/``target`` ``(B, H, W)`` or ``(H, W)`` (or logits ``(B, C, H, W)``)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.max(dim=-3).indices  # faster than argmax on CPU (same result)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if target.dim() == 2:
            pred, target = pred[None], target[None]
        for p, t in zip(pred, target):
            self._update_one(p.long(), t.long())

    def _update_one(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        h, w = target.shape
        tol = self.tolerance_px if self.tolerance_px is not None else self.tolerance_frac * math.hypot(h, w)
        valid = target != self.ignore_index
        # Only classes in this image cost anything: (K, H, W) with K typically 2-4.
        classes = torch.unique(torch.cat([target[valid], pred[valid]]))
        classes = classes[(classes >= 0) & (classes < self.num_classes)]
        if classes.numel() == 0:
            return
        gt = _fill_void(target, valid, steps=max(1, math.ceil(tol))) if not bool(valid.all()) else target
        known = gt >= 0
        gt_b = _boundaries(gt[None] == classes[:, None, None], known)
        pr_b = _boundaries(pred[None] == classes[:, None, None]) & known[None]  # none in deep void
        gt_near = _dilate(gt_b, tol)
        pr_near = _dilate(pr_b, tol)
        n_pr = pr_b.flatten(1).sum(1).double()
        n_gt = gt_b.flatten(1).sum(1).double()
        hit_p = (pr_b & gt_near).flatten(1).sum(1).double()
        hit_r = (gt_b & pr_near).flatten(1).sum(1).double()
        for k, c in enumerate(classes.tolist()):
            if n_pr[k] == 0 and n_gt[k] == 0:
                f1 = 1.0  # e.g. the class fills the whole image in both maps
            elif n_pr[k] == 0 or n_gt[k] == 0:
                f1 = 0.0
            else:
                p, r = float(hit_p[k] / n_pr[k]), float(hit_r[k] / n_gt[k])
                f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
            self.sum[c] += f1
            self.count[c] += 1

    def reduce_(self) -> None:
        """Sum the accumulators of all DDP processes (once)."""
        if self._reduced or not (dist.is_available() and dist.is_initialized()):
            return
        both = _all_reduce_sum(torch.stack([self.sum, self.count]))
        self.sum, self.count = both[0].clone(), both[1].clone()
        self._reduced = True

    def compute(self) -> dict:
        """``bf_per_class`` (NaN for classes never seen) and ``bf`` (their mean)."""
        per_class = [float(self.sum[c] / self.count[c]) if self.count[c] > 0 else float("nan")
                     for c in range(self.num_classes)]
        return {"bf_per_class": per_class, "bf": _nanmean(per_class)}


def format_table(scores: dict, class_names: Sequence[str] | None = None) -> str:
    """A per-class table (IoU, accuracy, and BF if ``scores`` has ``bf_per_class``) with a summary.

    ``scores`` is :meth:`ConfusionMatrix.compute`'s dict, optionally updated with
    :meth:`BoundaryF1.compute`'s. Values are percentages; '-' marks undefined ones.
    """
    iou = scores.get("iou", [])
    n = len(iou)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for {n} classes")
    bf = scores.get("bf_per_class")

    def pct(v: float | None) -> str:
        return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}"

    width = max([5] + [len(s) for s in names])
    cols = ["IoU", "Acc"] + (["BF"] if bf is not None else [])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{c:>6}" for c in cols)]
    lines.append("-" * len(lines[0]))
    for c in range(n):
        row = [pct(iou[c]), pct(scores["acc"][c])] + ([pct(bf[c])] if bf is not None else [])
        lines.append(f"{names[c]:<{width}}  " + "  ".join(f"{v:>6}" for v in row))
    lines.append("-" * len(lines[0]))
    summary = [("mIoU", scores.get("miou")), ("pixel acc", scores.get("pixel_acc")),
               ("mean acc", scores.get("mean_acc")), ("fwIoU", scores.get("fwiou"))]
    if "bf" in scores:
        summary.append(("BF", scores["bf"]))
    lines.append("  ".join(f"{k} {pct(v)}" for k, v in summary))
    return "\n".join(lines)
