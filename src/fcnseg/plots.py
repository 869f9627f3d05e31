"""Plots for runs and evaluations: the training curve and the confusion matrix.

Uses matplotlib's object-oriented API on the Agg canvas (no ``pyplot``), so it works
headless and never changes the global backend of a user's interactive session. Every
PNG is written atomically through :func:`fcnseg.outputs.atomic_write`.
:func:`new_figure` and :func:`save_figure` serve other plots (e.g. ``benchmarks/``).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from fcnseg.jsonl import read_jsonl
from fcnseg.outputs import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A ``width`` x ``height`` inch figure on its own Agg canvas (no pyplot: no global state, no GUI)."""
    # Lazy: matplotlib takes about a second to import, and only the plots need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path``, atomically; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return Path(path)


def plot_training_curve(metrics: str | os.PathLike | Sequence[dict], out_png: str | os.PathLike) -> Path:
    """Training loss and validation mIoU vs epoch, from ``metrics.jsonl`` rows.

    ``metrics`` is the path of a ``metrics.jsonl`` file or its rows (dicts with
    ``epoch``, ``train_loss`` and ``val`` -> ``miou``). Returns the PNG path.
    """
    rows = read_jsonl(metrics) if isinstance(metrics, (str, os.PathLike)) else list(metrics)
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    # None = not measured / undefined (metrics.jsonl writes NaN as null)
    loss_pts = [(r["epoch"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    miou_pts = [(r["epoch"], r["val"]["miou"]) for r in rows if (r.get("val") or {}).get("miou") is not None]
    if loss_pts:
        x, y = zip(*loss_pts)
        ax.plot(x, y, "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:blue")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    if miou_pts:
        x, y = zip(*miou_pts)
        ax2.plot(x, [100 * v for v in y], "s-", color="tab:orange", label="val mIoU")
    ax2.set_ylabel("val mIoU (%)", color="tab:orange")
    best = max(miou_pts, key=lambda p: p[1]) if miou_pts else None
    title = "training curve" + (f" (best mIoU {100 * best[1]:.1f}% at epoch {best[0]:g})" if best else "")
    ax.set_title(title)
    return save_figure(fig, out_png)


def plot_confusion_matrix(cm: np.ndarray | Sequence[Sequence[float]], class_names: Sequence[str],
                          out_png: str | os.PathLike, *, normalize: bool = True,
                          title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows = ground truth, columns = prediction).

    Each row is divided by its pixel count, so a cell is the fraction of a class's pixels
    predicted as the column's class (the diagonal is the per-class accuracy). Rows of
    classes absent from the data stay 0. Cell values are printed when there are <= 25 classes.
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    if cm.shape != (n, n) or len(class_names) != n:
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(class_names)} class names")
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.45 * n + 2.0)
    fig = new_figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(class_names), rotation=90)
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title + (" (row-normalised)" if normalize else ""))
    if n <= 25:
        for i in range(n):
            for j in range(n):
                v = cm[i, j]
                if v > 0:
                    ax.text(j, i, f"{v:.2f}" if normalize else f"{v:.0f}", ha="center", va="center",
                            fontsize=7, color="white" if v > 0.5 * (cm.max() or 1) else "black")
    return save_figure(fig, out_png)
