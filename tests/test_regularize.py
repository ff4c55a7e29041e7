"""L1, max-norm, dropout rate, label smoothing, early stopping, weight initialisation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from convlab import Callback, TrainConfig, fit
from convlab.checkpoint import read_meta
from convlab.errors import ConfigError
from convlab.models import create_model, default_preprocess
from convlab.training import TrainState, evaluate, make_loss
from convlab.training.regularize import (EarlyStopping, L1Penalty, MaxNorm, craft_callbacks,
                                      init_weights)

from conftest import make_imageset


def _state(model: nn.Module, lr: float) -> TrainState:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return TrainState(model, opt, TrainConfig())


def test_l1_is_a_proximal_step_on_weights_only():
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -0.005]]))
        lin.bias.fill_(0.3)
    L1Penalty(0.1).on_batch_end(_state(lin, lr=0.1))       # shrink by lr * lambda = 0.01
    assert lin.weight.flatten().tolist() == pytest.approx([0.49, 0.0])
    assert float(lin.bias.detach()) == pytest.approx(0.3)             # biases are not penalised


def test_max_norm_rescales_only_long_rows():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))   # norms 5 and 0.5
    MaxNorm(1.0).on_batch_end(_state(lin, lr=0.1))
    assert lin.weight.flatten().tolist() == pytest.approx([0.6, 0.8, 0.3, 0.4], rel=1e-5)
    conv = nn.Conv2d(1, 3, 3)
    with torch.no_grad():
        conv.weight.mul_(100)
    MaxNorm(2.0).on_batch_end(_state(conv, lr=0.1))
    assert conv.weight.flatten(1).norm(dim=1).max() <= 2.0 + 1e-5


def test_dropout_rate_on_models_that_have_dropout():
    data = make_imageset(4, 3)
    pre, _ = default_preprocess("small_cnn", 1, 28)
    model = create_model("small_cnn", 3, 1, input_size=28)
    c = TrainConfig(epochs=1, batch_size=12, val_split=0.0, dropout=0.2)
    fit(model, data, None, config=c, preprocess=pre.replace(size=(28, 28)), verbose=False)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2]
    with pytest.raises(ConfigError, match="no dropout layers"):
        fit(create_model("mnist_cnn", 3, 1), data, None, config=c,
            preprocess=default_preprocess("mnist_cnn", 1, 28)[0], verbose=False)


def test_label_smoothing_reaches_the_loss():
    loss = make_loss(TrainConfig(label_smoothing=0.1))
    logits = torch.tensor([[100.0, 0.0, 0.0]])
    # a confident right answer still pays for the 0.1/3 mass on each wrong class
    assert float(loss(logits, torch.tensor([0]))) == pytest.approx(2 * (0.1 / 3) * 100, rel=1e-4)


def test_early_stopping_unit_counts_patience():
    model = nn.Linear(1, 1)
    es = EarlyStopping(patience=2, monitor="val_acc")
    state = _state(model, 0.1)
    from convlab.training import EpochStats
    for epoch, acc in enumerate([0.5, 0.8, 0.7, 0.79], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        es.on_epoch_end(state, EpochStats(epoch, 0, 0, 1.0, acc, 0.1, 0))
    assert state.stop and es.best_epoch == 2
    es.on_fit_end(state)
    assert float(model.weight.detach()) == 2.0


class _Weights(Callback):
    """Puts known weights in at the start of each epoch (lr ~ 0 keeps them)."""

    def __init__(self, per_epoch):
        self.per_epoch = per_epoch

    def on_epoch_start(self, state):
        state.model.load_state_dict(self.per_epoch[state.epoch - 1])


def test_early_stopping_restores_the_best_epochs_weights(tmp_path):
    data = make_imageset(10, 3)
    trn, val = data.split(0.3, seed=0)
    pre, _ = default_preprocess("mnist_linear", 1, 28)
    model = create_model("mnist_linear", 3, 1)
    good = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}   # loss ln 3
    torch.manual_seed(0)
    bad = [{k: torch.randn_like(v) * 0.5 for k, v in good.items()} for _ in range(3)]
    epochs = [bad[0], good, bad[1], bad[2], good]
    c = TrainConfig(epochs=5, batch_size=64, lr=1e-12, optimizer="sgd", val_split=0.3, patience=2)
    r = fit(model, trn, val, config=c, preprocess=pre, run_dir=tmp_path / "run",
            callbacks=[_Weights(epochs)], verbose=False)
    assert r.stopped_early and r.epochs_run == 4
    assert [s.extra["best_epoch"] for s in r.history] == [1, 2, 2, 2]
    assert r.history[1].val_loss == pytest.approx(math.log(3), rel=1e-4)
    assert all(float(v.abs().max()) < 1e-9 for v in model.state_dict().values())   # the best
    assert evaluate(model, val, pre).loss == pytest.approx(min(s.val_loss for s in r.history))
    saved = read_meta(tmp_path / "run")
    assert saved["state"]["complete"]


@pytest.mark.parametrize("scheme", ["gaussian", "xavier", "kaiming"])
def test_weight_initialisation_schemes(scheme):
    torch.manual_seed(0)
    lin = init_weights(nn.Sequential(nn.Linear(400, 300)), scheme, bias=0.01)[0]
    std = float(lin.weight.detach().std())
    expected = {"gaussian": 0.001, "xavier": math.sqrt(2 / (400 + 300)),
                "kaiming": math.sqrt(2 / 400)}[scheme]
    assert std == pytest.approx(expected, rel=0.03)
    assert torch.all(lin.bias == 0.01)


def test_config_builds_the_callbacks_it_asks_for():
    names = [type(cb).__name__ for cb in craft_callbacks(TrainConfig(
        epochs=3, init="xavier", schedule="cosine", l1=1e-4, max_norm=3.0, patience=1))]
    assert names == ["WeightInit", "LRSchedule", "L1Penalty", "MaxNorm", "EarlyStopping"]
    assert craft_callbacks(TrainConfig(schedule="constant")) == []
    with pytest.raises(ConfigError, match="init-bias"):
        TrainConfig(init_bias=0.01)
