"""Datasets: the IDX and CIFAR readers on files written here, folders, splits, errors."""
from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlab.data import ImageSet, Preprocess, load_dataset, load_folder
from convlab.data.images import decode_image
from convlab.data.sources import read_cifar_archive, read_idx
from convlab.errors import DatasetError

from conftest import make_imageset, write_folder


def write_idx(path: Path, arr: np.ndarray, code: int = 0x08, gz: bool = True) -> None:
    raw = struct.pack(">BBBB", 0, 0, code, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_mnist_files(root: Path, n_train: int = 30, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_idx_reader_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", arr)
    write_idx(tmp_path / "x.idx", arr, gz=False)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), arr)
    assert np.array_equal(read_idx(tmp_path / "x.idx"), arr)


def test_idx_truncated_and_bad_magic_name_the_file(tmp_path):
    arr = np.zeros((5, 28, 28), np.uint8)
    f = tmp_path / "imgs.idx"
    write_idx(f, arr, gz=False)
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"imgs\.idx: truncated"):
        read_idx(f)
    g = tmp_path / "junk.gz"
    g.write_bytes(gzip.compress(b"\x01\x02\x03\x04hello"))
    with pytest.raises(DatasetError, match=r"junk\.gz: not an IDX file"):
        read_idx(g)
    h = tmp_path / "broken.gz"
    h.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError, match=r"broken\.gz: cannot read"):
        read_idx(h)


def test_mnist_lookup_via_convlab_data(tmp_path, monkeypatch):
    write_mnist_files(tmp_path / "mnist")
    monkeypatch.setenv("CONVLAB_DATA", str(tmp_path))
    train = load_dataset("mnist", "train")
    test = load_dataset("mnist", "test")
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    assert train.labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert train.classes == [str(i) for i in range(10)]


def test_missing_dataset_offline_names_the_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLAB_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DatasetError) as exc:
        load_dataset("mnist")
    msg = str(exc.value)
    assert str(tmp_path / "nothing" / "mnist") in msg and "convlab/mnist" in msg
    assert "download" in msg


def _cifar_batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return pickle.dumps({b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                         b"labels": list(range(n))}, protocol=2)


def test_cifar_archive_and_folder(tmp_path, monkeypatch):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(_cifar_batch(4, i))
    (folder / "test_batch").write_bytes(_cifar_batch(3, 9))
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    x1, y1 = read_cifar_archive(folder, ["data_batch_1", "data_batch_2"])
    x2, y2 = read_cifar_archive(tgz, ["data_batch_1", "data_batch_2"])
    assert x1.shape == (8, 3, 32, 32) and np.array_equal(x1, x2) and np.array_equal(y1, y2)
    monkeypatch.setenv("CONVLAB_DATA", str(tmp_path))
    ds = load_dataset("cifar10", "test")
    assert ds.images.shape == (3, 3, 32, 32) and ds.classes[3] == "cat"


def test_cifar_refuses_foreign_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    f = tmp_path / "data_batch_1"
    f.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        read_cifar_archive(tmp_path, ["data_batch_1"])


def test_unknown_dataset_lists_choices():
    with pytest.raises(DatasetError, match=r"did you mean fashion-mnist\?.*valid: cifar10, digit-boxes, digits"):
        load_dataset("fashion-mnst")


def test_bundled_datasets_are_real():
    digits = load_dataset("digits")
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.max() == 255
    m5k = load_dataset("mnist-5k")
    assert m5k.images.shape == (5000, 1, 28, 28)
    assert m5k.class_counts().min() > 400  # every digit is there


def test_split_is_stratified_and_seeded(tiny_set):
    train, val = tiny_set.split(0.25, seed=3)
    assert len(train) + len(val) == len(tiny_set)
    assert val.class_counts().tolist() == [5, 5, 5]
    again, _ = tiny_set.split(0.25, seed=3)
    assert torch.equal(train.images, again.images)
    other, _ = tiny_set.split(0.25, seed=4)
    assert not torch.equal(train.images, other.images)


def test_few_shot(tiny_set):
    fs = tiny_set.few_shot(4)
    assert fs.class_counts().tolist() == [4, 4, 4]
    with pytest.raises(DatasetError, match="needs 50 images per class"):
        tiny_set.few_shot(50)


def test_decode_any_mode(tmp_path):
    modes = {"L": (7,), "RGB": (1, 2, 3), "RGBA": (10, 20, 30, 0), "P": 5, "CMYK": (0, 0, 0, 0),
             "I;16": 65535, "I": 1000, "F": 0.5, "1": 1}
    for mode, colour in modes.items():
        img = Image.new(mode, (9, 7), colour)
        path = tmp_path / f"im_{mode.replace(';', '')}.{'tiff' if mode in ('I;16', 'I', 'F', 'CMYK') else 'png'}"
        img.save(path)
        for channels in (1, 3):
            t = decode_image(path, channels)
            assert t.shape == (channels, 7, 9) and t.dtype == torch.uint8, mode
    # fully transparent RGBA composites on white
    assert decode_image(tmp_path / "im_RGBA.png", 3).min() == 255
    # 16-bit white stays white
    assert decode_image(tmp_path / "im_I16.tiff", 1).max() == 255


def test_folder_loading_skips_bad_files_and_caches(tmp_path):
    write_folder(tmp_path / "data", n_per_class=3, classes=("cat", "dog"), mode="RGBA")
    (tmp_path / "data" / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "empty").mkdir()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = load_folder(tmp_path / "data", channels=3, size=16)
    messages = " ".join(str(x.message) for x in w)
    assert "notes.txt" in messages and "empty class folder" in messages
    assert ds.classes == ["cat", "dog", "empty"] and len(ds) == 6
    assert ds.images.shape == (6, 3, 16, 16)
    with pytest.raises(DatasetError, match="empty class folder"):
        load_folder(tmp_path / "data", channels=1, size=16, strict=True)
    (tmp_path / "data" / "empty").rmdir()
    with pytest.raises(DatasetError, match="notes.txt"):
        load_folder(tmp_path / "data", channels=1, size=16, strict=True)
    first = load_folder(tmp_path / "data", channels=3, size=16)
    (tmp_path / "data" / "dog" / "0.png").unlink()  # any change to the folder is noticed
    again = load_folder(tmp_path / "data", channels=3, size=16)
    assert len(first) == 6 and len(again) == 5


def test_preprocess_rules():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    pad = Preprocess(1, (32, 32), "pad")
    y = pad(x)
    assert y.shape == (2, 1, 32, 32) and y[0, 0, 0, 0] == 0 and y[0, 0, 16, 16] == 1
    crop = Preprocess(3, (224, 224), "shorter_crop", mean=(0.5,) * 3, std=(0.5,) * 3)
    z = crop(torch.zeros(1, 3, 300, 400, dtype=torch.uint8))
    assert z.shape == (1, 3, 224, 224) and float(z.min()) == -1.0


def test_imageset_validates():
    with pytest.raises(DatasetError, match="uint8"):
        ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"])
    with pytest.raises(DatasetError, match="labels must lie in 0..1"):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ["a", "b"])
    assert make_imageset(2, 2).describe().startswith("synthetic: 4 images 1x28x28")
