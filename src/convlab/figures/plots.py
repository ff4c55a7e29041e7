"""Training-craft figures: the LR range test, curves by epoch, confusion matrix, mistakes.

Rendering only: each function takes numbers already computed elsewhere (LRFindResult,
meta.json's per-epoch metrics, evaluation.json's confusion counts and mistakes) and
writes a PNG through base.save_figure / base.image_grid.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import ConfigError
from .base import image_grid, plt, save_figure

__all__ = ["plot_lr_find", "plot_history", "plot_confusion", "plot_mistakes", "HISTORY_KEYS"]

HISTORY_KEYS = ("loss", "val_loss", "acc", "val_acc", "lr")  # the per-epoch series plot_history draws


def plot_lr_find(result, path: str | os.PathLike, title: str = "") -> Path:
    """Loss against learning rate (log axis): raw and smoothed, with the suggestion."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    finite = [(lr, s) for lr, s in zip(result.lrs, result.smoothed) if math.isfinite(s)]
    raw = [(lr, v) for lr, v in zip(result.lrs, result.losses) if math.isfinite(v)]
    ax.plot(*zip(*raw), color="0.75", lw=0.8, label="mini-batch loss")
    ax.plot(*zip(*finite), color="C0", lw=2, label="smoothed loss")
    best = min(s for _, s in finite)
    ax.axvline(result.suggestion, color="C2", ls="--",
               label=f"suggestion {result.suggestion:.2g} (steepest descent)")
    ax.axvline(result.min_loss_lr, color="C1", ls=":", label=f"lowest loss at {result.min_loss_lr:.2g}")
    if result.diverged_lr is not None:
        ax.axvline(result.diverged_lr, color="C3", ls="-.", label=f"diverged at {result.diverged_lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlim(result.start_lr, result.end_lr)
    start = finite[0][1]
    low = min(best, min(v for _, v in raw))
    ax.set_ylim(low - 0.05 * (start - low + 1e-3), max(start, best) * 1.6)  # hide the blow-up
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title("Learning-rate range test" + (f": {title}" if title else ""))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def plot_history(metrics: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Loss and accuracy (training and validation) and learning rate by epoch, from
    meta.json's "metrics" list (one dict per epoch: epoch, loss, acc, val_loss, val_acc, lr).

    Only the series the run has are drawn: a features run (a head fitted on frozen
    embeddings) records a validation accuracy but no training loss, accuracy or rate,
    so it gets one accuracy panel."""
    epochs = [m["epoch"] for m in metrics]

    def series(key: str) -> list[tuple]:
        return [(e, m[key]) for e, m in zip(epochs, metrics) if m.get(key) is not None]
    score = "mAP50" if metrics and metrics[-1].get("val_metric") == "mAP50" else "accuracy"
    panels = [(name, series(key), series(val_key))
              for name, key, val_key in (("loss", "loss", "val_loss"), (score, "acc", "val_acc"))]
    panels = [p for p in panels if p[1] or p[2]]
    rates = series("lr")
    n = len(panels) + bool(rates)
    if n == 0:
        raise ConfigError(f"plot_history: nothing to draw; each epoch needs one of "
                          f"{', '.join(HISTORY_KEYS)}")
    fig, axes = plt.subplots(1, n, figsize=(13 * n / 3 if n > 1 else 5, 3.6), squeeze=False)
    axes = list(axes[0])
    for ax, (name, train, val) in zip(axes, panels):
        if train:
            ax.plot(*zip(*train), "o-", label="training", ms=3)
        if val:
            ax.plot(*zip(*val), "s-", color="C1", label="validation", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name.capitalize() if name.islower() else name)  # 'Loss', 'mAP50'
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if rates:
        ax = axes[-1]
        ax.plot(*zip(*rates), "o-", color="C2", ms=3)
        lrs = [lr for _, lr in rates]
        if min(lrs) > 0 and max(lrs) > 3 * min(lrs):
            ax.set_yscale("log")
        elif max(lrs) == min(lrs):  # a constant rate: show it as a flat line at its value
            ax.set_ylim(0, 2 * max(lrs) or 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.set_title("Learning rate (at the end of each epoch)")
        ax.grid(True, alpha=0.3)
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str], path: str | os.PathLike,
                   title: str = "") -> Path:
    """Counts in each cell; colour by the row's share (so small classes read as well)."""
    c = confusion.double()
    k = len(classes)
    share = c / c.sum(1, keepdim=True).clamp(min=1)
    side = max(4.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                n = int(confusion[i, j])
                if n:
                    ax.text(j, i, f"{n:,}", ha="center", va="center", fontsize=7 if k > 12 else 8,
                            color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), list(classes), rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), list(classes), fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "Confusion matrix (counts; colour = share of the true class)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    return save_figure(fig, path)


def plot_mistakes(images: torch.Tensor, labels: torch.Tensor, pred: torch.Tensor,
                  conf: torch.Tensor, classes: Sequence[str], path: str | os.PathLike,
                  title: str = "Most confidently wrong",
                  maps: Sequence[torch.Tensor] | None = None) -> Path:
    """A grid of images titled 'true -> predicted (p)'; with `maps` (one (h, w) evidence
    map in 0..1 per image), each image is followed by a copy with its heatmap over it."""
    from .explain import overlay

    def short(name: str) -> str:
        return name if len(name) <= 12 else name[:11] + "."
    titles = [f"{short(classes[t])} ->\n{short(classes[p])} {c:.0%}"
              for t, p, c in zip(labels.tolist(), pred.tolist(), conf.tolist())]
    if maps is None:
        return image_grid(images, path, titles=titles, title=title, cell=1.6)
    cells = []
    for img, m in zip(images, maps):
        rgb = img.expand(3, -1, -1) if img.shape[0] == 1 else img           # (3, H, W)
        heat = (overlay(img, m) * 255).round().to(torch.uint8).permute(2, 0, 1)
        cells += [rgb, heat]
    pairs = min(len(images), 4)
    return image_grid(torch.stack(cells), path, titles=[x for t in titles for x in (t, "evidence")],
                      title=title, cell=1.4, ncols=2 * pairs)


def plot_detections(images: torch.Tensor, truths: Sequence[torch.Tensor], found: Sequence[dict],
                    classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """A grid of images with their true boxes (green, dashed) and the boxes a detector
    found (red, with class and score). truths: rows [class, cx, cy, w, h] in 0..1;
    found: {"boxes": xyxy in 0..1, "scores", "labels"} per image."""
    from matplotlib.patches import Rectangle

    n = len(images)
    cols = min(n, 4)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, truth, det in zip(axes.flat, images, truths, found):
        h, w = img.shape[-2:]
        ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None)
        for c, cx, cy, bw, bh in truth.tolist():
            if c < 0:
                continue
            ax.add_patch(Rectangle(((cx - bw / 2) * w, (cy - bh / 2) * h), bw * w, bh * h,
                                   fill=False, ec="lime", lw=1.5, ls="--"))
        for (x1, y1, x2, y2), sc, lab in zip(det["boxes"], det["scores"], det["labels"]):
            ax.add_patch(Rectangle((x1 * w, y1 * h), (x2 - x1) * w, (y2 - y1) * h, fill=False,
                                   ec="red", lw=1.5))
            ax.text(x1 * w, y1 * h - 1, f"{classes[lab]} {sc:.2f}", color="white", fontsize=7,
                    va="bottom", bbox={"facecolor": "red", "pad": 1, "lw": 0})
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
