"""Learning-rate schedules: the lecture's decays, cosine and one-cycle, with optional warm-up.

A schedule is a pure function of training time t (in epochs, fractional within an
epoch) and the run's length T (epochs): `lr_factor(...)` returns the multiplier on
the base learning rate. `LRSchedule` is the fit-loop callback that applies it before
every optimizer step; the learning rate logged each epoch (EpochStats.lr) is the one in
effect when the epoch ends.
"""
from __future__ import annotations

import math

from ..config import SCHEDULES, TrainConfig
from .callbacks import Callback, EpochStats, TrainState

__all__ = ["SCHEDULES", "lr_factor", "LRSchedule", "schedule_curve"]

# one-cycle (Smith & Topin): start at lr/25, peak at `peak` of the run, end at lr/1e4
ONE_CYCLE_START = 1 / 25
ONE_CYCLE_END = 1e-4


def lr_factor(cfg: TrainConfig, t: float, total: float, steps_per_epoch: int = 1) -> float:
    """Multiplier on cfg.lr at time t epochs into a run of `total` epochs.

    constant: 1. step: x gamma every `step_every` epochs (or batches with
    step_unit='batch'). exponential: gamma ** t (the lecture's x0.97 per epoch).
    inverse-time: 1 / (1 + k t). sqrt: sqrt(1 - t/T). exp: exp(-k t).
    cosine: (1 + cos(pi t/T)) / 2. one-cycle: linear warm-up from lr/25 to lr over
    the first `peak` of the run, then cosine down to lr/1e4.
    Warm-up (cfg.warmup epochs) multiplies any schedule by a linear ramp from 0.
    """
    s, frac = cfg.schedule, min(max(t / total, 0.0), 1.0) if total > 0 else 0.0
    if s == "constant":
        f = 1.0
    elif s == "step":
        done = t * steps_per_epoch if cfg.step_unit == "batch" else t
        f = cfg.step_gamma ** math.floor(done / cfg.step_every + 1e-9)
    elif s == "exponential":
        f = cfg.exp_gamma ** t
    elif s == "inverse-time":
        f = 1.0 / (1.0 + cfg.decay * t)
    elif s == "sqrt":
        f = math.sqrt(max(1.0 - frac, 0.0))
    elif s == "exp":
        f = math.exp(-cfg.decay * t)
    elif s == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * frac))
    else:  # one-cycle
        peak = cfg.peak
        if frac < peak:
            f = ONE_CYCLE_START + (1.0 - ONE_CYCLE_START) * frac / peak
        else:
            u = (frac - peak) / (1.0 - peak)
            f = ONE_CYCLE_END + (1.0 - ONE_CYCLE_END) * 0.5 * (1.0 + math.cos(math.pi * u))
    if cfg.warmup > 0 and t < cfg.warmup:
        f *= t / cfg.warmup
    return f


def schedule_curve(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of every optimizer step of a run (for plots and tests)."""
    total = cfg.epochs * steps_per_epoch
    return [cfg.lr * lr_factor(cfg, _time(i, steps_per_epoch), cfg.epochs, steps_per_epoch)
            for i in range(total)]


def _time(step: int, steps_per_epoch: int) -> float:
    # the midpoint of a step, so warm-up's first step is small but not zero
    return (step + 0.5) / steps_per_epoch


class LRSchedule(Callback):
    """Sets every parameter group's lr before each optimizer step.

    Groups keep their ratio to the first group's base lr (transfer learning gives the
    backbone a smaller rate than the head).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.base: list[float] = []

    def on_fit_start(self, state: TrainState) -> None:
        groups = state.optimizer.param_groups
        self.base = [g.setdefault("initial_lr", g["lr"]) for g in groups]
        self._apply(state)

    def on_batch_end(self, state: TrainState) -> None:
        self._apply(state)

    def on_epoch_end(self, state: TrainState, stats: EpochStats) -> None:
        stats.extra["lr"] = float(state.optimizer.param_groups[0]["lr"])  # on the epoch line

    def _apply(self, state: TrainState) -> None:
        n = max(state.steps_per_epoch, 1)
        f = lr_factor(self.cfg, _time(state.step, n), self.cfg.epochs, n)
        for g, base in zip(state.optimizer.param_groups, self.base):
            g["lr"] = base * f
