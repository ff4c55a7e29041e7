"""Embeddings from the bundled backbone: shapes, the content-addressed cache, bad input."""
from __future__ import annotations

import pytest
import torch

from convlab import DatasetError
from convlab.files import cache_root
from convlab.embed import Embedder, embed_images

from conftest import make_imageset

SIZE = 64  # a small input keeps the test fast; the cache key includes it


@pytest.fixture
def embedder():
    return Embedder("efficientnet_lite0", image_size=SIZE)


def test_embeddings_shape_and_cache_computes_nothing_the_second_time(embedder):
    images = make_imageset(n_per_class=3, classes=2, channels=1, size=28).images  # any size, grey
    first = embedder.embed(images, batch_size=4)
    assert first.shape == (6, 1280) and first.dtype == torch.float32
    assert embedder.stats.computed == 6 and embedder.stats.cached == 0
    assert torch.allclose(first, embedder.forward(images), atol=1e-5)  # the cache stores the real rows
    again = embedder.embed(images)
    assert embedder.stats.computed == 0 and embedder.stats.cached == 6
    assert torch.equal(first, again)
    # one changed image is the only one computed; duplicates inside a call are computed once
    changed = images.clone()
    changed[2] = 255 - changed[2]
    twice = torch.cat([changed, changed[2:3]])
    out = embedder.embed(twice)
    assert embedder.stats.computed == 1 and torch.equal(out[6], out[2])
    assert not torch.allclose(out[2], first[2])
    # the same images through the module-level function share the cache (new Embedder instance)
    via_function = embed_images(images, image_size=SIZE, progress=False)
    assert torch.equal(via_function, first)


def test_cache_ignores_partial_and_damaged_entries(embedder):
    images = make_imageset(n_per_class=2, classes=2, channels=3, size=40).images
    ref = embedder.embed(images)
    folder = cache_root() / "embeddings" / embedder.key
    shards = list(folder.glob("*.safetensors"))
    assert len(shards) == 1
    # an interrupted write leaves only a dot-temp file, which is never read
    (folder / f".{shards[0].name}.tmp999").write_bytes(shards[0].read_bytes()[:100])
    # a damaged shard is dropped and its rows computed again
    shards[0].write_bytes(shards[0].read_bytes()[:50])
    again = embedder.embed(images)
    assert embedder.stats.computed == 4
    assert torch.allclose(again, ref, atol=1e-5)
    assert embedder.embed(images) is not None and embedder.stats.computed == 0


def test_chosen_layer_and_key_differ(embedder):
    images = make_imageset(n_per_class=1, classes=2, channels=3, size=32).images
    mid = Embedder("efficientnet_lite0", layer="blocks.5", image_size=SIZE)
    assert mid.embed(images).shape == (2, 192)  # stage 6 of EfficientNet-Lite0 has 192 channels
    assert mid.key != embedder.key


def test_bad_input_is_refused(embedder):
    with pytest.raises(DatasetError, match="uint8 images"):
        embedder.embed(torch.rand(2, 3, 32, 32))
    with pytest.raises(DatasetError, match="1 or 3 channels"):
        embedder.embed(torch.zeros(2, 4, 32, 32, dtype=torch.uint8))
