"""Batched augmentation, train-split normalisation, augment-preview; never on validation data."""
from __future__ import annotations

import pytest
import torch

from convlab import TrainConfig, fit, train
from convlab.checkpoint import read_meta
from convlab.cli import main
from convlab.config import AugmentConfig
from convlab.data.augment import (Augment, affine, check_augment, colour_jitter, flip,
                                  normalization, pad_crop, pca_lighting, random_erase)
from convlab.errors import ConfigError
from convlab.models import create_model, default_preprocess

from conftest import make_imageset, write_folder


def batch(n=6, c=1, h=12, w=10, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_pad_crop_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    x = batch()
    out = pad_crop(x, 2)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        assert any(torch.equal(out[i], xp[i, :, dy:dy + 12, dx:dx + 10])
                   for dy in range(5) for dx in range(5))


def test_flips_by_probability():
    x = batch()
    assert torch.equal(flip(x, 1.0, -1), x.flip(-1))
    assert torch.equal(flip(x, 1.0, -2), x.flip(-2))
    assert torch.equal(flip(x, 0.0, -1), x)


def test_affine_identity_and_rotation():
    x = batch(h=10)
    assert torch.allclose(affine(x, 0.0, 1e-9, 0.0), x, atol=1e-5)
    torch.manual_seed(1)
    moved = affine(x, 0.0, 0.0, 0.3)
    assert moved.shape == x.shape and not torch.allclose(moved, x)
    # random-resized crops lie inside the image: a constant image stays constant (no padding)
    ones = torch.ones(64, 1, 10, 10)
    assert torch.allclose(affine(ones, 0.1, 0.0, 0.0), ones, atol=1e-5)
    # and they zoom in: a centred bright square grows on average
    sq = torch.zeros(64, 1, 20, 20)
    sq[:, :, 8:12, 8:12] = 1
    assert affine(sq, 0.3, 0.0, 0.0).sum() > sq.sum() * 1.2


def test_colour_ops_stay_in_range_and_lighting_is_a_per_image_offset():
    torch.manual_seed(0)
    x = batch(c=3) * 0.5 + 0.25
    j = colour_jitter(x, 0.5)
    assert j.shape == x.shape and j.min() >= 0 and j.max() <= 1
    g = batch(c=1) * 0.5 + 0.25
    delta = pca_lighting(g, 0.1) - g                      # no clamping in 0.25..0.75
    assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta), atol=1e-6)
    assert delta.abs().max() > 0


def test_random_erasing_fills_one_rectangle_per_image():
    torch.manual_seed(0)
    x = torch.zeros(50, 1, 20, 20)
    out = random_erase(x, 1.0)
    changed = (out != 0)[:, 0]
    for m in changed:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.015 * 400 <= area <= 0.4 * 400            # 2-33% of the image, rounded
    assert torch.equal(random_erase(x, 0.0), x)


def test_full_augment_keeps_shape_and_range():
    torch.manual_seed(0)
    cfg = AugmentConfig(crop=2, resized_crop=0.5, hflip=0.5, vflip=0.5, translate=0.1, rotate=15,
                        jitter=0.3, lighting=0.1, erase=0.5)
    x = batch(8, 3, 16, 16)
    y = Augment(cfg)(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= 0 and y.max() <= 1


def test_crop_larger_than_the_image_is_refused():
    with pytest.raises(ConfigError, match="at most 3 px"):
        check_augment(AugmentConfig(crop=4), (8, 8))
    with pytest.raises(ConfigError, match="probability"):
        AugmentConfig(hflip=1.5)


def test_augmentation_never_touches_validation_data():
    data = make_imageset(10, 3)
    trn, val = data.split(0.3, seed=0)
    pre, _ = default_preprocess("mnist_cnn", 1, 28)
    seen = []

    def recording(x):
        seen.append(len(x))
        return Augment(AugmentConfig(hflip=1.0))(x)

    c = TrainConfig(epochs=2, batch_size=7, lr=0.01, optimizer="momentum")
    fit(create_model("mnist_cnn", 3, 1), trn, val, config=c, preprocess=pre, verbose=False,
        augment=recording)
    assert sum(seen) == 2 * len(trn)                       # every training image, each epoch
    # the config's augmentation: a refused crop stops fit before any training
    with pytest.raises(ConfigError, match="random crop"):
        fit(create_model("mnist_cnn", 3, 1), trn, val, config=c.replace(augment=AugmentConfig(crop=20)),
            preprocess=pre, verbose=False)


def test_normalisation_from_the_training_split_goes_into_meta(tmp_path):
    data = make_imageset(10, 3)
    pre, _ = default_preprocess("mnist_cnn", 1, 28)
    x = data.images.double() / 255
    ch = normalization(data, pre, "channel")
    assert ch.mean[0] == pytest.approx(float(x.mean()), rel=1e-6)
    assert ch.std[0] == pytest.approx(float(x.std(unbiased=False)), rel=1e-6)
    assert torch.allclose(ch(data.images).mean(), torch.tensor(0.0), atol=1e-5)
    im = normalization(data, pre, "image")
    assert torch.allclose(torch.tensor(im.mean_image).view(1, 28, 28), x.mean(0).float(), atol=1e-6)
    assert torch.allclose(im(data.images).mean(0), torch.zeros(1, 28, 28), atol=1e-5)
    r = train(data, "mnist_cnn", TrainConfig(epochs=1, batch_size=10, normalize="image", val_split=0.0),
              out=tmp_path / "run", device="cpu", verbose=False)
    meta = read_meta(r.run_dir)
    assert meta["preprocess"]["mean_image"] == pytest.approx(list(im.mean_image))
    assert meta["train"]["normalize"] == "image"


def test_augment_preview_cli(tmp_path, capsys):
    write_folder(tmp_path / "pets", n_per_class=4)
    out = tmp_path / "grid.png"
    assert main(["augment-preview", str(tmp_path / "pets"), "-n", "5", "--crop", "4", "--hflip",
                 "0.5", "--rotate", "20", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and "crop=4" in capsys.readouterr().out
    assert main(["augment-preview", str(tmp_path / "pets"), "--out", str(out)]) == 2
