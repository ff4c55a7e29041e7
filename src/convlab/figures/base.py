"""What every figure here shares: the matplotlib setup, save_figure and image_grid.

matplotlib draws to files only (the Agg backend, chosen when convlab.figures is first
imported, which only code that draws does; `import convlab` leaves matplotlib alone).
Computation stays elsewhere.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..files import atomic_path  # noqa: E402

__all__ = ["image_grid", "save_figure", "plt"]


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save atomically (temp file + rename) and close the figure."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def image_grid(images: torch.Tensor, path: str | os.PathLike, *, titles: Sequence[str] | None = None,
               ncols: int | None = None, title: str = "", cmap: str = "gray",
               normalize_each: bool = False, cell: float = 1.3) -> Path:
    """Save a grid of images (N, C, H, W), C in {1, 3}, uint8 or float, as a PNG.

    `normalize_each` rescales every image to its own min..max (kernels, feature maps);
    otherwise uint8 is shown as is and floats are taken as 0..1.
    """
    x = images.detach().cpu().float()
    if x.dim() == 3:
        x = x[:, None]
    n = len(x)
    ncols = ncols or min(n, max(1, math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    # room above each row for its titles (more for multi-line ones)
    title_h = 0.15 * max(t.count("\n") + 1 for t in titles) if titles else 0.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, (cell + title_h) * nrows
                                                    + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = x[i]
        if normalize_each:
            lo, hi = img.min(), img.max()
            img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
        elif images.dtype == torch.uint8:
            img = img / 255.0
        img = img.clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
