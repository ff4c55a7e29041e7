"""PNG pictures of what a network learned (drawing only; the tensors come from
convlab.analysis.learned, the grid from convlab.figures.base.image_grid)."""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..analysis.learned import conv_kernels, diverging, feature_maps, linear_templates
from .base import image_grid

__all__ = ["save_kernels", "save_templates", "save_feature_maps"]


def save_kernels(model: nn.Module, path: str | os.PathLike, *, label: str = "",
                 layer: str | None = None) -> Path:
    """The kernels of a conv layer (default: the first) as an image grid; 3-channel
    kernels in colour, others in red (positive) / blue (negative)."""
    name, w, note = conv_kernels(model, layer)
    n, c, k = w.shape[0], w.shape[1], w.shape[-1]
    title = f"{label}: {n} learned {k}x{k} kernels of {name}" + (f" ({note})" if note else "")
    if c == 3:  # colour: each kernel scaled to its own range, as the classic AlexNet picture
        return image_grid(w, path, title=title, normalize_each=True, titles=[str(i) for i in range(n)])
    return image_grid(diverging(w), path, title=title + "; red +, blue -", cmap="bwr",
                      titles=[str(i) for i in range(n)])


def save_templates(model: nn.Module, image_shape: tuple[int, int, int], path: str | os.PathLike, *,
                   classes: Sequence[str] | None = None, label: str = "",
                   layer: str | None = None) -> Path:
    """The weights from the pixels to each unit of a linear layer, as C x H x W templates
    (red: the pixel votes for the unit, blue: against). Titled by class when the layer's
    units are the classes."""
    name, t = linear_templates(model, image_shape, layer)
    n = len(t)
    if classes is not None and len(classes) == n:
        titles = list(classes)
        what = "class"
    else:
        titles = [f"unit {i}" for i in range(n)]
        what = "hidden unit"
    title = f"{label}: weights of {name} to each {what} ({image_shape[1]}x{image_shape[2]})"
    if t.shape[1] == 3:
        return image_grid(t, path, titles=titles, title=title, normalize_each=True, cell=1.6)
    return image_grid(diverging(t), path, titles=titles, title=title + "; red +, blue -",
                      cmap="bwr", cell=1.6, ncols=min(n, 10 if n > 12 else 5))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def save_feature_maps(model: nn.Module, x: torch.Tensor, layers: Sequence[str],
                      out_dir: str | os.PathLike, *, label: str = "", image_name: str = "",
                      max_maps: int = 64) -> list[Path]:
    """One PNG per layer (features-LAYER.png): the first `max_maps` feature maps of that
    layer for the preprocessed image x (1, C, H, W), each scaled to its own range."""
    maps = feature_maps(model, x, list(layers))
    paths = []
    for name, fm in maps.items():
        c, h, w = fm.shape
        shown = min(c, max_maps)
        title = (f"{label}: {name}, {shown} of {c} feature maps ({h}x{w})"
                 + (f" for {image_name}" if image_name else ""))
        paths.append(image_grid(fm[:shown, None], Path(out_dir) / f"features-{_slug(name)}.png",
                                title=title, normalize_each=True, cmap="viridis",
                                titles=[str(i) for i in range(shown)]))
    return paths
