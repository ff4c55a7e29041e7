"""Whether a dataset has an official test split, and loading it: the one place that knows.

Folders of class folders and in-memory sets have no test split; a registered dataset
has one when its spec lists a "test" size, a YOLO folder when it has images/val. Training, transfer, evaluation and the CLI ask here.
"""
from __future__ import annotations

import os

from ..data import DetectionSet, ImageSet, dataset_spec, list_datasets, load_dataset

__all__ = ["has_test_split", "load_test_split"]


def has_test_split(dataset: str | os.PathLike) -> bool:
    """True when `dataset` names a registered dataset that ships a test split, or is a
    YOLO-format folder with images/val (or images/test)."""
    name = os.fspath(dataset)
    if name not in list_datasets():
        from ..data.yolo import has_split, is_yolo_folder
        return is_yolo_folder(name) and has_split(name, "test")
    return "test" in dataset_spec(name).sizes


def load_test_split(dataset: str | os.PathLike, *, channels: int | None = None,
                    size: int | None = None) -> ImageSet | DetectionSet | None:
    """The official test split of `dataset`, or None when it has none."""
    if not has_test_split(dataset):
        return None
    return load_dataset(os.fspath(dataset), "test", channels=channels, size=size)
