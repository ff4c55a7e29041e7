"""Learning-rate schedules: factors worked by hand, the lr logged per epoch, CLI options."""
from __future__ import annotations

import math

import pytest

from convlab import TrainConfig, fit
from convlab.cli import build_parser
from convlab.cli.options import train_config_from_args
from convlab.errors import ConfigError
from convlab.models import create_model, default_preprocess
from convlab.training.schedules import lr_factor, schedule_curve

from conftest import make_imageset


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 10, **kw})


@pytest.mark.parametrize("kw,t,expected", [
    (dict(schedule="constant"), 7.3, 1.0),
    (dict(schedule="step", step_every=3), 2.9, 1.0),
    (dict(schedule="step", step_every=3), 3.0, 0.1),
    (dict(schedule="step", step_every=3), 6.5, 0.01),
    (dict(schedule="exponential"), 1.0, 0.97),
    (dict(schedule="exponential"), 2.0, 0.97 ** 2),
    (dict(schedule="inverse-time", decay=1.0), 1.0, 0.5),
    (dict(schedule="inverse-time", decay=0.5), 2.0, 0.5),
    (dict(schedule="sqrt"), 7.5, 0.5),               # sqrt(1 - 7.5/10)
    (dict(schedule="exp", decay=1.0), 1.0, math.exp(-1)),
    (dict(schedule="cosine"), 5.0, 0.5),
    (dict(schedule="cosine"), 10.0, 0.0),
    (dict(schedule="one-cycle", peak=0.25), 0.0, 1 / 25),
    (dict(schedule="one-cycle", peak=0.25), 2.5, 1.0),
    (dict(schedule="one-cycle", peak=0.25), 10.0, 1e-4),
    (dict(schedule="cosine", warmup=2.0), 1.0, 0.5 * 0.5 * (1 + math.cos(math.pi * 0.1))),
])
def test_lr_factor_by_hand(kw, t, expected):
    assert lr_factor(cfg(**kw), t, 10) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_step_schedule_counts_batches():
    c = cfg(schedule="step", step_every=50, step_unit="batch")
    assert lr_factor(c, 0.49, 10, steps_per_epoch=100) == 1.0
    assert lr_factor(c, 0.5, 10, steps_per_epoch=100) == pytest.approx(0.1)
    assert lr_factor(c, 1.0, 10, steps_per_epoch=100) == pytest.approx(0.01)


def test_curve_one_cycle_rises_then_falls():
    curve = schedule_curve(cfg(epochs=4, schedule="one-cycle", lr=0.1), steps_per_epoch=10)
    top = curve.index(max(curve))
    assert len(curve) == 40 and 8 <= top <= 10
    assert all(a <= b for a, b in zip(curve[:top], curve[1:top + 1]))
    assert all(a >= b for a, b in zip(curve[top:], curve[top + 1:]))
    assert curve[0] < 0.1 / 10 and curve[-1] < 0.1 / 100


def test_fit_applies_the_schedule_and_logs_lr_each_epoch():
    data = make_imageset(8, 3)
    pre, _ = default_preprocess("mnist_cnn", 1, 28)
    c = TrainConfig(epochs=3, batch_size=8, lr=0.05, optimizer="momentum", schedule="exponential",
                    exp_gamma=0.5, val_split=0.0)
    r = fit(create_model("mnist_cnn", 3, 1), data, None, config=c, preprocess=pre, verbose=False)
    # 24 images / 8 = 3 steps per epoch; the rate in effect after epoch e is that of step 3e
    assert [s.lr for s in r.history] == pytest.approx([0.05 * 0.5 ** ((3 * e + 0.5) / 3)
                                                        for e in (1, 2, 3)])


@pytest.mark.parametrize("kw,match", [
    (dict(schedule="cosin"), "unknown schedule 'cosin'.*cosine"),
    (dict(schedule="step", step_every=10), "never decay"),
    (dict(warmup=10.0), "warm-up must be"),
    (dict(patience=3, val_split=0.0), "needs a validation split"),
    (dict(label_smoothing=0.1, loss="mse"), "cross-entropy"),
    (dict(peak=1.0), "peak"),
])
def test_conflicting_options_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        cfg(**kw)


def test_recipe_and_flags_on_the_command_line():
    p = build_parser()
    a = p.parse_args(["train", "fashion-mnist", "--recipe", "fmnist-94", "--epochs", "3", "--hflip", "0"])
    c = train_config_from_args(a)
    assert c.epochs == 3 and c.schedule == "one-cycle" and c.label_smoothing == 0.1
    assert c.augment.crop == 2 and c.augment.hflip == 0.0
    # an option typed at its default value still overrides the recipe's
    c = train_config_from_args(p.parse_args(["train", "x", "--recipe", "fmnist-94",
                                             "--weight-decay", "0", "--optimizer", "adam"]))
    assert (c.weight_decay, c.optimizer, c.batch_size) == (0.0, "adam", 256)
    a = p.parse_args(["train", "x", "--model", "mnist_cnn", "--schedule", "step", "--epochs", "4",
                      "--step-every", "2", "--warmup", "0.5", "--rotate", "10"])
    c = train_config_from_args(a)
    assert (c.schedule, c.step_every, c.warmup, c.augment.rotate) == ("step", 2, 0.5, 10.0)
    assert TrainConfig.from_dict(c.to_dict()) == c  # meta.json round trip, nested augment


def test_fmnist_recipe_uses_bf16_only_where_the_cpu_has_it():
    from convlab._runtime import cpu_has_bf16
    from convlab.recipes import recipe

    cfg = recipe("fmnist-94").config
    assert cfg.precision == ("bf16" if cpu_has_bf16() else "fp32")
    assert cfg.epochs == 16 and cfg.augment.erase == 0.25 and cfg.label_smoothing == 0.1
