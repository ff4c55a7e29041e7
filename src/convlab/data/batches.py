"""Batches: slices of an in-memory ImageSet (or FeatureSet) by a seeded permutation,
sharded across ranks."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .featureset import FeatureSet
from .imageset import ImageSet
from .preprocess import Preprocess

__all__ = ["Batches", "epoch_permutation", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of epoch `epoch`'s shuffle (torch's RandomSampler given a
    generator seeded with it draws the same order as epoch_permutation)."""
    return seed * 1_000_003 + epoch


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch `epoch`: the same on every rank and on resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))


class Batches:
    """Iterate (input, labels) batches over an ImageSet without per-sample Python work.

    The uint8 images move to `device` once. With shuffle, each epoch's order comes from
    (seed, epoch); with world_size > 1 each global batch of `batch_size` is split across
    ranks (rank r takes every world_size-th sample), so the ranks together see exactly
    what one process would. `augment` (float 0..1 batch -> batch; with an attribute
    with_targets, (batch, targets) -> both, as detection's BoxJitter) runs before
    normalisation, only where it is given (training). A FeatureSet (preprocess None)
    yields its feature rows as they are.
    """

    def __init__(self, data: ImageSet | FeatureSet, batch_size: int, preprocess: Preprocess | None, *,
                 shuffle: bool = False, seed: int = 0, device: torch.device | str = "cpu",
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 drop_last: bool = False) -> None:
        self.data = data
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.augment = augment
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.drop_last = drop_last
        self.epoch = 0
        if (preprocess is None) != isinstance(data, FeatureSet):
            raise TypeError("Batches: an ImageSet needs its Preprocess; a FeatureSet takes none")
        self.images = (data.features if preprocess is None else data.images).to(self.device)
        self.labels = data.labels.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def indices(self) -> Iterator[torch.Tensor]:
        """This rank's sample indices, one tensor per global batch."""
        n = len(self.data)
        order = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield idx[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.indices():
            idx = idx.to(self.device)
            if self.preprocess is None:
                yield self.images[idx], self.labels[idx]  # feature rows (B, D)
                continue
            x = self.preprocess.fit(self.images[idx]).float().div_(255.0)  # (B, C, H, W) 0..1
            y = self.labels[idx]
            if getattr(self.augment, "with_targets", False):  # moves boxes with the pixels
                x, y = self.augment(x, y)
            elif self.augment is not None:
                x = self.augment(x)
            x = self.preprocess.normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
