"""FeatureSet: feature vectors (embeddings) with labels, the source that lets the one
training loop train a head on a frozen backbone's cached embeddings."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DatasetError
from .imageset import check_labels

__all__ = ["FeatureSet"]


@dataclass
class FeatureSet:
    """Features as float32 (N, D), labels as int64 (N,), and the class names. Batches
    yields its rows as they are (no preprocessing, no augmentation)."""

    features: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = "embeddings"

    def __post_init__(self) -> None:
        if self.features.dtype != torch.float32 or self.features.dim() != 2:
            raise DatasetError(f"FeatureSet features must be float32 (N, D); got "
                               f"{self.features.dtype} with shape {tuple(self.features.shape)}")
        check_labels(self.labels, len(self.features), len(self.classes), "FeatureSet")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
