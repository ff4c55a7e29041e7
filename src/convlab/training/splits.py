"""Whether a dataset has an official test split, and loading it: the one place that knows.

Folders and in-memory ImageSets have no test split; a registered dataset has one when
its spec lists a "test" size. Training, transfer, evaluation and the CLI ask here.
"""
from __future__ import annotations

import os

from ..data import ImageSet, dataset_spec, list_datasets, load_dataset

__all__ = ["has_test_split", "load_test_split"]


def has_test_split(dataset: str | os.PathLike) -> bool:
    """True when `dataset` names a registered dataset that ships a test split."""
    name = os.fspath(dataset)
    return name in list_datasets() and "test" in dataset_spec(name).sizes


def load_test_split(dataset: str | os.PathLike, *, channels: int | None = None,
                    size: int | None = None) -> ImageSet | None:
    """The official test split of `dataset`, or None when it has none."""
    if not has_test_split(dataset):
        return None
    return load_dataset(os.fspath(dataset), "test", channels=channels, size=size)
