"""Shared test fixtures: small data made in the test, an isolated cache, golden files."""
from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convlab.data import ImageSet

GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden files in tests/golden/ from today's output "
                          "instead of comparing with them")


@pytest.fixture
def golden(request):
    """check(name, text): text must equal tests/golden/<name> exactly (as torchinfo's
    golden tests do); with `pytest --update-golden` the file is rewritten instead."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        command = f"pytest '{request.node.nodeid}' --update-golden"
        if update:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            return
        if not path.exists():
            pytest.fail(f"no golden file tests/golden/{name}; write it with: {command}",
                        pytrace=False)
        expected = path.read_text()
        if text != expected:
            diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                                f"tests/golden/{name}", "today's output"))
            pytest.fail(f"output differs from tests/golden/{name}:\n{diff}\n"
                        f"if the change is intended, rewrite the file with: {command}",
                        pytrace=False)

    return check


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's ~/.cache/convlab apart from the user's, and never download."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("CONVLAB_OFFLINE", "1")


def make_imageset(n_per_class: int = 20, classes: int = 3, channels: int = 1, size: int = 28,
                  seed: int = 0) -> ImageSet:
    """Learnable synthetic images: class c is a bright bar at a class-specific place."""
    gen = torch.Generator().manual_seed(seed)
    n = n_per_class * classes
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = (torch.rand(n, channels, size, size, generator=gen) * 60).to(torch.uint8)
    band = max(1, size // (classes + 1))
    for i, c in enumerate(labels.tolist()):
        images[i, :, c * band:(c + 1) * band, :] = 220
    return ImageSet(images, labels, [f"class{c}" for c in range(classes)], "synthetic")


@pytest.fixture
def one_thread():
    """Small models run fastest on one thread; on a busy 2-core machine more threads only wait."""
    from convlab._runtime import one_thread as single_thread

    with single_thread():
        yield


@pytest.fixture
def tiny_set() -> ImageSet:
    return make_imageset()


def write_folder(root, n_per_class: int = 6, classes=("cat", "dog"), size: int = 40,
                 mode: str = "RGB") -> None:
    """A folder of class subfolders with PNG images of a class-specific colour."""
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40)]
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = (rng.random((size, size, 3)) * 50).astype(np.uint8) + np.array(colours[c % 4], np.uint8) // 2
            Image.fromarray(arr, "RGB").convert(mode).save(d / f"{i}.png")


def face_api_folder() -> Path:
    """The installed face-api npm package (its model/ and demo/ photos); skips the test
    without it."""
    from convlab.errors import ConvlabError
    from convlab.models.detector import face_api_dir

    try:
        return face_api_dir()
    except ConvlabError as exc:
        pytest.skip(f"needs the face-api npm package: {exc}")
