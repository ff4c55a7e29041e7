"""Regularisation and initialisation as fit-loop callbacks: L1 (a proximal step), max-norm
constraints, dropout rate, early stopping that restores the best weights, and the
lecture's weight initialisation schemes. L2 is the optimizer's weight decay and label
smoothing is the loss's (tasks/classification.py); `craft_callbacks(config)` builds the rest.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from .callbacks import Callback, EpochStats, TrainState
from .schedules import LRSchedule

__all__ = ["craft_callbacks", "L1Penalty", "MaxNorm", "DropoutRate", "EarlyStopping",
           "WeightInit", "init_weights", "constrained_weights"]

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def constrained_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight tensors of conv and linear layers (not biases, not normalisation)."""
    return [m.weight for m in model.modules() if isinstance(m, _WEIGHTED) and m.weight.requires_grad]


class L1Penalty(Callback):
    """L1 on conv/linear weights as the proximal step of lambda * |w|_1 after each update:
    w <- sign(w) * max(|w| - lr * lambda, 0). For plain SGD this is the subgradient of the
    L1 term, except that weights cross to exactly zero instead of oscillating around it.
    """

    def __init__(self, strength: float) -> None:
        self.strength = strength

    def on_batch_end(self, state: TrainState) -> None:
        ids = {id(w) for w in constrained_weights(state.model)}
        with torch.no_grad():
            for g in state.optimizer.param_groups:
                shrink = g["lr"] * self.strength
                for p in g["params"]:
                    if id(p) in ids:
                        p.copy_(p.sign() * (p.abs() - shrink).clamp_(min=0))


class MaxNorm(Callback):
    """Max-norm constraint: after each update, every unit's incoming weight vector
    (a Linear row, a conv filter) is scaled back to L2 norm <= c."""

    def __init__(self, c: float) -> None:
        self.c = c

    def on_batch_end(self, state: TrainState) -> None:
        with torch.no_grad():
            for w in constrained_weights(state.model):
                # renorm over dim 0: each output unit's slice (in, kh, kw) separately
                w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=self.c))


class DropoutRate(Callback):
    """Sets the rate of every dropout layer; refuses models that have none."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def on_fit_start(self, state: TrainState) -> None:
        layers = [m for m in state.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        if not layers:
            raise ConfigError(f"--dropout {self.rate}: this model has no dropout layers; models "
                              f"with dropout include small_cnn")
        for m in layers:
            m.p = self.rate


class EarlyStopping(Callback):
    """Stop when `monitor` (val_loss or val_acc) has not improved by more than
    `min_delta` for `patience` epochs, and put back the best epoch's weights at the end.

    The best weights are kept in memory (and in the run's training state, so a resumed
    run still knows them); `best_epoch` says which epoch they came from.
    """

    def __init__(self, patience: int, monitor: str = "val_loss", min_delta: float = 0.0) -> None:
        self.patience, self.monitor, self.min_delta = patience, monitor, min_delta
        self.best = math.inf if monitor == "val_loss" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def _improved(self, value: float) -> bool:
        if self.monitor == "val_loss":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, state: TrainState, stats: EpochStats) -> None:
        value = getattr(stats, self.monitor)
        if value is None:
            raise ConfigError("early stopping needs validation data after each epoch; "
                              "fit() was given none")
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, stats.epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                state.stop = True
        stats.extra["best_epoch"] = self.best_epoch

    def on_fit_end(self, state: TrainState) -> None:
        if self.best_state is not None:
            state.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"best": torch.tensor(self.best, dtype=torch.float64),
                "best_epoch": torch.tensor(self.best_epoch), "wait": torch.tensor(self.wait),
                **({"weights": self.best_state} if self.best_state is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.best_epoch, self.wait = int(state["best_epoch"]), int(state["wait"])
        self.best_state = state.get("weights")


def init_weights(model: nn.Module, scheme: str, bias: float = 0.0) -> nn.Module:
    """Re-initialise conv and linear layers: 'gaussian' (std 0.001, the lecture's small
    random numbers), 'xavier' (Glorot uniform), 'kaiming' (He normal, fan-in, for ReLU);
    biases become the constant `bias` (0, or a small positive value such as 0.01 so ReLUs
    start active). 'default' leaves PyTorch's own initialisation.
    """
    if scheme == "default":
        return model
    rules = {"gaussian": lambda w: nn.init.normal_(w, 0.0, 0.001),
             "xavier": nn.init.xavier_uniform_,
             "kaiming": lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")}
    if scheme not in rules:
        raise ConfigError(f"unknown init '{scheme}'; valid: default, {', '.join(rules)}")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _WEIGHTED):
                rules[scheme](m.weight)
                if m.bias is not None:
                    m.bias.fill_(bias)
    return model


class WeightInit(Callback):
    """Applies init_weights at the start of a fresh run (never on resume)."""

    def __init__(self, scheme: str, bias: float = 0.0) -> None:
        self.scheme, self.bias = scheme, bias

    def on_fit_start(self, state: TrainState) -> None:
        if state.step == 0:
            init_weights(state.model, self.scheme, self.bias)


def craft_callbacks(cfg: TrainConfig) -> list[Callback]:
    """The callbacks a TrainConfig asks for, in the order they must run."""
    cbs: list[Callback] = []
    if cfg.init != "default":
        cbs.append(WeightInit(cfg.init, cfg.init_bias))
    if cfg.dropout is not None:
        cbs.append(DropoutRate(cfg.dropout))
    if cfg.schedule != "constant" or cfg.warmup > 0:
        cbs.append(LRSchedule(cfg))
    if cfg.l1 > 0:
        cbs.append(L1Penalty(cfg.l1))
    if cfg.max_norm > 0:
        cbs.append(MaxNorm(cfg.max_norm))
    if cfg.patience > 0:
        cbs.append(EarlyStopping(cfg.patience, cfg.monitor, cfg.min_delta))
    return cbs
