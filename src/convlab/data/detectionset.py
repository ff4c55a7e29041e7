"""DetectionSet: images with boxes, held in memory like an ImageSet, so that the one
pipeline (Batches, fit, evaluate) runs detection unchanged.

`labels` are the box targets of every image as one float tensor (N, M, 5): rows
[class, cx, cy, w, h] in 0..1 of the image, padded with rows of class -1 (M is the
most boxes any image has; an image without boxes is a negative).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import DatasetError
from .imageset import ImagesHeld

__all__ = ["DetectionSet", "pad_boxes", "check_boxes"]


def pad_boxes(per_image: list[torch.Tensor]) -> torch.Tensor:
    """Box rows (K_i, 5) of each image -> (N, max K_i, 5), padded with class -1."""
    m = max((len(b) for b in per_image), default=0)
    out = torch.full((len(per_image), m, 5), -1.0)
    for i, b in enumerate(per_image):
        if len(b):
            out[i, :len(b)] = b
    return out


def check_boxes(rows: torch.Tensor, num_classes: int, where: str) -> None:
    """Raise DatasetError unless every row is a class below num_classes and a box of
    positive size inside 0..1 (`where` names the data)."""
    if not len(rows):
        return
    cls, cx, cy, w, h = rows.unbind(-1)
    if (cls != cls.round()).any() or (cls < 0).any() or (cls >= num_classes).any():
        raise DatasetError(f"{where}: class ids must be integers in 0..{num_classes - 1}; "
                           f"found {cls.min():g}..{cls.max():g}")
    if (w <= 0).any() or (h <= 0).any():
        raise DatasetError(f"{where}: every box needs a positive width and height")
    lo = torch.stack([cx - w / 2, cy - h / 2]) < -1e-4
    hi = torch.stack([cx + w / 2, cy + h / 2]) > 1 + 1e-4
    if lo.any() or hi.any():
        raise DatasetError(f"{where}: boxes must lie inside the image (0..1)")


@dataclass
class DetectionSet(ImagesHeld):
    """Images as uint8 (N, C, S, S) (letterboxed to one square size), box targets
    (N, M, 5) and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    meta: dict = field(default_factory=dict)

    task = "detection"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetError(f"DetectionSet images must be uint8 (N, C, H, W); got "
                               f"{self.images.dtype} with shape {tuple(self.images.shape)}")
        if self.labels.dim() != 3 or self.labels.shape[-1] != 5 or len(self.labels) != len(self.images):
            raise DatasetError(f"DetectionSet labels must be float ({len(self.images)}, M, 5); "
                               f"got {tuple(self.labels.shape)}")
        self.labels = self.labels.float()
        check_boxes(self.labels[self.labels[..., 0] >= 0], len(self.classes), self.name or "boxes")

    def rows(self) -> torch.Tensor:
        """Every box of the set, (B, 5)."""
        return self.labels[self.labels[..., 0] >= 0]

    def class_counts(self) -> torch.Tensor:
        """Boxes per class, int64 (num_classes,)."""
        return torch.bincount(self.rows()[:, 0].long(), minlength=self.num_classes)

    def subset(self, index, name: str | None = None) -> DetectionSet:
        index = torch.as_tensor(index, dtype=torch.int64)
        labels = self.labels[index]
        m = int((labels[..., 0] >= 0).sum(1).max()) if len(labels) else 0
        return DetectionSet(self.images[index], labels[:, :m], list(self.classes),
                            self.name if name is None else name, dict(self.meta))

    def split(self, val_fraction: float, seed: int = 0) -> tuple[DetectionSet, DetectionSet]:
        """Random (train, validation) split of the images."""
        if not 0.0 < val_fraction < 1.0:
            raise DatasetError(f"validation fraction must be between 0 and 1 (exclusive); "
                               f"got {val_fraction}")
        if len(self) < 2:
            raise DatasetError(f"{self.name}: a validation split needs at least 2 images")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_val = min(max(1, round(len(self) * val_fraction)), len(self) - 1)
        return self.subset(order[n_val:].sort().values), self.subset(order[:n_val].sort().values)

    def few_shot(self, k: int, seed: int = 0) -> DetectionSet:
        raise DatasetError("few-shot selection picks k images per class; a detection set's "
                           "images hold several classes each, so it has none")

    def describe(self) -> str:
        c, h, w = self.shape
        return (f"{self.name or 'images'}: {len(self)} images {c}x{h}x{w}, "
                f"{len(self.rows())} boxes in {self.num_classes} classes")
