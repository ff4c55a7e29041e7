"""Readers for the on-disk formats: IDX (MNIST family), CIFAR python batches, folders."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import DatasetError
from ..files import atomic_path, atomic_write_bytes, cache_root
from .imageset import ImageSet
from .images import IMAGE_SUFFIXES, decode_image, resize_images

__all__ = ["read_idx", "read_cifar_batch", "load_folder"]

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz), checking its header against its length."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: cannot read ({exc}); delete it to download it again")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: truncated or padded IDX data: header says {dims} "
                           f"({expected} bytes), file holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).copy()


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: dicts, lists, bytes and numpy arrays, nothing callable."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def read_cifar_batch(data: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 (N, 3, 32, 32), int64 labels)."""
    try:
        batch = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a corrupt or foreign file
        raise DatasetError(f"{label}: not a CIFAR python batch ({exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{label}: not a CIFAR python batch (no data/labels entries)")
    x = np.asarray(batch[b"data"], dtype=np.uint8)
    y = np.asarray(batch[b"labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise DatasetError(f"{label}: CIFAR batch has data {x.shape} and {len(y)} labels; "
                           f"expected (N, 3072) and N labels")
    return x.reshape(-1, 3, 32, 32), y


def read_cifar_archive(path: Path, members: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read the named batches from a cifar-10-python.tar.gz or an extracted folder."""
    xs, ys = [], []
    for member in members:
        if path.is_dir():
            f = path / member
            if not f.exists():
                raise DatasetError(f"{path}: missing CIFAR batch file {member}")
            x, y = read_cifar_batch(f.read_bytes(), str(f))
        else:
            try:
                with tarfile.open(path) as tar:
                    m = tar.extractfile(f"cifar-10-batches-py/{member}")
                    if m is None:
                        raise KeyError(member)
                    x, y = read_cifar_batch(m.read(), f"{path}:{member}")
            except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
                raise DatasetError(f"{path}: cannot read CIFAR batch {member} ({exc})") from None
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _folder_fingerprint(files: list[Path], channels: int, size: tuple[int, int] | None) -> str:
    h = hashlib.sha256(json.dumps([channels, size]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def load_folder(root: str | os.PathLike, *, channels: int = 3, size: int | tuple[int, int] | None = 64,
                strict: bool = False, cache: bool = True) -> ImageSet:
    """A folder of class subfolders (the ImageFolder layout) as an ImageSet.

    Every image is decoded with Pillow, converted to `channels` and resized to `size`
    (an int for square images; None keeps the size, which must then be the same for
    all). Unreadable files are listed and skipped (`strict=True` makes them an error).
    The decoded set is cached under ~/.cache/convlab/folders, keyed by every file's
    path, size and modification time, so a second load of an unchanged folder is fast.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory of class folders")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: no class subfolders; expected {root}/<class>/<image files>")
    if isinstance(size, int):
        size = (size, size)
    files: list[Path] = []
    labels: list[int] = []
    empty, skipped = [], []
    for c, d in enumerate(class_dirs):
        members = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not members:
            empty.append(d.name)
        for p in members:
            files.append(p)
            labels.append(c)
    if empty:
        msg = f"{root}: empty class folder(s): {', '.join(empty)}"
        if strict:
            raise DatasetError(msg)
        warnings.warn(msg, stacklevel=2)
    classes = [d.name for d in class_dirs]

    key = _folder_fingerprint(files, channels, size)
    cache_file = cache_root() / "folders" / f"{key}.safetensors"
    if cache and cache_file.exists():
        try:
            t = load_file(cache_file)
            info = json.loads((cache_file.with_suffix(".json")).read_text())
            if info.get("skipped") and strict:
                raise DatasetError(f"{root}: unreadable files: {', '.join(info['skipped'])}")
            for s in info.get("skipped", []):
                warnings.warn(f"skipped unreadable file {s}", stacklevel=2)
            return ImageSet(t["images"], t["labels"], info["classes"], str(root),
                            {"source": "folder", "root": str(root)})
        except (OSError, KeyError, ValueError, json.JSONDecodeError):
            pass  # a damaged cache entry is rebuilt below

    images, kept = [], []
    for p, lab in zip(files, labels):
        try:
            img = decode_image(p, channels)
        except DatasetError as exc:
            if strict:
                raise
            skipped.append(str(p))
            warnings.warn(f"skipped {exc}", stacklevel=2)
            continue
        if size is not None:
            img = resize_images(img[None], size)[0]
        elif images and img.shape != images[0].shape:
            raise DatasetError(f"{p}: size {tuple(img.shape)} differs from {tuple(images[0].shape)}; "
                               f"pass a size to resize all images")
        images.append(img)
        kept.append(lab)
    if not images:
        raise DatasetError(f"{root}: no readable images (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    x = torch.stack(images)
    y = torch.tensor(kept, dtype=torch.int64)
    if cache:
        with atomic_path(cache_file) as tmp:
            save_file({"images": x.contiguous(), "labels": y}, str(tmp))
        atomic_write_bytes(cache_file.with_suffix(".json"),
                           json.dumps({"classes": classes, "skipped": skipped}).encode())
    return ImageSet(x, y, classes, str(root), {"source": "folder", "root": str(root)})
