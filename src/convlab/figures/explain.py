"""Where a network looks, drawn: an image beside its evidence heatmap, and Zeiler &
Fergus's top patches with their deconvnet projections. Drawing only: the maps and
patches come from convlab.analysis.attribution.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import plt, save_figure

__all__ = ["overlay", "save_explanation", "save_top_patches", "HEAT_CMAP"]

HEAT_CMAP = "jet"   # blue: no evidence, red: the most


def _rgb(image: torch.Tensor) -> torch.Tensor:
    """uint8 or 0..1 float (C, H, W), C in {1, 3} -> float (H, W, 3) in 0..1."""
    x = image.detach().cpu().float()
    if image.dtype == torch.uint8:
        x = x / 255
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).clamp(0, 1)


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.45) -> torch.Tensor:
    """The image (C, H, W) with a heatmap (h, w) in 0..1 laid over it (resized to the
    image, bilinear): float (H, W, 3) in 0..1."""
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    heat = F.interpolate(heat[None, None].float(), size=(h, w), mode="bilinear",
                         align_corners=False)[0, 0].clamp(0, 1)     # (h', w') -> (H, W)
    colour = torch.from_numpy(plt.get_cmap(HEAT_CMAP)(heat.numpy())[..., :3]).float()
    return (1 - alpha) * rgb + alpha * colour


def save_explanation(image: torch.Tensor, heat: torch.Tensor, path: str | os.PathLike, *,
                     title: str = "", caption: str = "") -> Path:
    """Two panels: the image as the model saw it, and the same with the evidence heatmap
    (h, w) in 0..1 over it."""
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.9))
    axes[0].imshow(_rgb(image).numpy(), interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(overlay(image, heat).numpy(), interpolation="nearest")
    axes[1].set_title(caption, fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _projection_rgb(p: torch.Tensor) -> torch.Tensor:
    """A projection (C, h, w) as an image: scaled around zero to 0..1 (grey is zero),
    as the deconvnet figures show them. The scale is the 99th percentile of |p|, not the
    maximum: a few centre pixels dominate and would leave the rest grey."""
    scale = p.abs().flatten().float().quantile(0.99).clamp_min(1e-12)
    return _rgb((p / (2 * scale) + 0.5).clamp(0, 1))


def save_top_patches(patches, path: str | os.PathLike, *, title: str = "",
                     projections: bool = True, cell: float = 0.62) -> Path:
    """One row per unit: its k top patches (the input region its receptive field covers
    at its strongest response in each image), each followed by its projection."""
    units, k = len(patches.units), max(len(h) for h in patches.hits)
    per = 2 if projections and patches.projections and patches.projections[0] else 1
    ncols = k * per
    fig, axes = plt.subplots(units, ncols, figsize=(cell * ncols + 0.8, cell * units + 0.7),
                             squeeze=False)
    for u in range(units):
        for j in range(k):
            for part in range(per):
                ax = axes[u, j * per + part]
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_visible(False)
                if j >= len(patches.hits[u]):
                    continue
                img = (_rgb(patches.crops[u][j]) if part == 0
                       else _projection_rgb(patches.projections[u][j]))
                ax.imshow(img.numpy(), interpolation="nearest")
        axes[u, 0].set_ylabel(f"unit {patches.units[u]}", fontsize=7, rotation=0, ha="right",
                              va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.06, hspace=0.08)
    return save_figure(fig, path)

