"""The decks' "comparison" chart: ImageNet top-1 accuracy against operations per image,
each network a bubble whose area is its parameter count. Drawing only: the rows come
from convlab.analysis.backbones."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..analysis.backbones import BackboneRow
from .base import plt, save_figure

__all__ = ["plot_comparison"]

_AREA_PER_MILLION = 18.0    # points^2 of bubble per million parameters
_LEGEND_SIZES = (5, 25, 100)  # millions of parameters shown in the size legend


def _bubble(params: int) -> float:
    return max(params / 1e6 * _AREA_PER_MILLION, 12.0)


def plot_comparison(rows: Sequence[BackboneRow], path: str | os.PathLike, *,
                    reference: Sequence[BackboneRow] = (), title: str = "") -> Path:
    """Top-1 accuracy (%) against GMACs per image (log scale), bubble area = parameters.

    `rows` are drawn in colour and named (the offline backbones); `reference` in grey
    (the zoo's published figures). Rows without a top-1 figure are left out."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row in reference:
        if row.top1 is None:
            continue
        ax.scatter(row.macs / 1e9, row.top1, s=_bubble(row.params), color="0.75", alpha=0.6,
                   edgecolors="0.45", linewidths=0.6, zorder=1)
        ax.annotate(row.name, (row.macs / 1e9, row.top1), textcoords="offset points",
                    xytext=(3 + math.sqrt(_bubble(row.params)) / 2, 0), va="center",
                    fontsize=7, color="0.4")
    for i, row in enumerate(r for r in rows if r.top1 is not None):
        ax.scatter(row.macs / 1e9, row.top1, s=_bubble(row.params), color=colours[i % len(colours)],
                   alpha=0.75, edgecolors="black", linewidths=0.6, zorder=2)
        r = math.sqrt(_bubble(row.params)) / 2
        ax.annotate(row.name, (row.macs / 1e9, row.top1), textcoords="offset points",
                    xytext=(r * 0.7, -r * 0.7 - 1), va="top", fontsize=8, zorder=3)
    for size in _LEGEND_SIZES:  # empty bubbles of known sizes: the area scale
        ax.scatter([], [], s=_bubble(int(size * 1e6)), facecolors="none", edgecolors="0.3",
                   label=f"{size}M parameters")
    ax.legend(loc="lower right", fontsize=7, labelspacing=1.8, borderpad=1.2, handletextpad=1.6,
              frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel("operations per image (GMACs, log scale)")
    ax.set_ylabel("ImageNet-1K top-1 accuracy (%)")
    ax.margins(x=0.15, y=0.12)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "Accuracy against operations; bubble area = parameters "
                          "(grey: torchvision's published zoo)", fontsize=9)
    return save_figure(fig, path)
