"""ImageSet: a labelled set of images held in memory as one uint8 tensor."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import DatasetError

__all__ = ["ImageSet", "ImagesHeld", "stratified_split", "check_labels"]


def stratified_split(labels: torch.Tensor, num_classes: int, val_fraction: float, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train index, validation index), each sorted: every class gives round(fraction x
    its count) to validation, and a class with at least two samples puts at least one
    in each part. Works on the labels alone (`ImageSet.split` uses it; the teach app
    splits its stored samples with it without decoding them)."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"validation fraction must be between 0 and 1 (exclusive); "
                           f"got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values


def check_labels(labels: torch.Tensor, n: int, num_classes: int, what: str) -> None:
    """Raise DatasetError unless `labels` are int64 (n,) class indices below num_classes."""
    if labels.dtype != torch.int64 or labels.shape != (n,):
        raise DatasetError(f"{what} labels must be int64 of shape ({n},); got {labels.dtype} "
                           f"with shape {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DatasetError(f"labels must lie in 0..{num_classes - 1} for {num_classes} "
                           f"classes; found {int(labels.min())}..{int(labels.max())}")


class ImagesHeld:
    """What every in-memory set of images (ImageSet, DetectionSet) has: `images` uint8
    (N, C, H, W), `classes`, and `subset(index)`."""

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def head(self, n: int):
        """The first n images."""
        return self.subset(torch.arange(min(n, len(self))))


@dataclass
class ImageSet(ImagesHeld):
    """Images as uint8 (N, C, H, W), labels as int64 (N,), and the class names.

    `name` says where the images came from (a dataset name or a folder) and travels
    into a run's meta.json.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetError(
                f"ImageSet images must be uint8 (N, C, H, W); got {self.images.dtype} "
                f"with shape {tuple(self.images.shape)}")
        check_labels(self.labels, len(self.images), len(self.classes), "ImageSet")

    def class_counts(self) -> torch.Tensor:
        """Images per class, int64 (num_classes,)."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def subset(self, index: torch.Tensor | list[int], name: str | None = None) -> ImageSet:
        """The images at `index`, same classes."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return ImageSet(self.images[index], self.labels[index], list(self.classes),
                        name if name is not None else self.name, dict(self.meta))

    def split(self, val_fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Stratified (train, validation) split: each class keeps its share.

        Every class with at least two images puts at least one in each part.
        """
        train, val = stratified_split(self.labels, self.num_classes, val_fraction, seed)
        return self.subset(train), self.subset(val, name=self.name)

    def few_shot(self, k: int, seed: int = 0) -> ImageSet:
        """k images per class, chosen at random with `seed`."""
        counts = self.class_counts()
        short = [self.classes[c] for c in range(self.num_classes) if counts[c] < k]
        if short:
            raise DatasetError(f"few_shot({k}) needs {k} images per class; too few in: "
                               f"{', '.join(short)}")
        gen = torch.Generator().manual_seed(seed)
        picked = []
        for c in range(self.num_classes):
            idx = torch.nonzero(self.labels == c).flatten()
            picked.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
        return self.subset(torch.cat(picked).sort().values)

    def describe(self) -> str:
        c, h, w = self.shape
        return (f"{self.name or 'images'}: {len(self)} images {c}x{h}x{w}, "
                f"{self.num_classes} classes")
