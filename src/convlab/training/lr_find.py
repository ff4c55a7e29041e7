"""The learning-rate range test (Smith 2015; fastai's lr_find).

Train for a few hundred mini-batches while the learning rate grows exponentially from
`start_lr` to `end_lr`, one step per batch, and record the loss. The loss first
barely moves (rate too small), then falls, then blows up (rate too large). A good
rate is where the smoothed loss falls fastest, well before it diverges. The model's
weights are restored afterwards.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import TrainConfig
from ..data import ImageSet, Preprocess
from ..errors import ConfigError, TrainingError
from ..progress import progress
from ..tasks import CLASSIFICATION, Task
from .callbacks import Callback, TrainState
from .loop import fit

__all__ = ["LRFindResult", "lr_find"]


@dataclass
class LRFindResult:
    """What the range test measured, and the rate it suggests."""

    lrs: list[float]            # learning rate of each step
    losses: list[float]         # raw mini-batch loss of each step
    smoothed: list[float]       # bias-corrected exponential moving average of the loss
    start_lr: float
    end_lr: float
    suggestion: float           # steepest descent of the smoothed loss, before its minimum
    min_loss_lr: float          # where the smoothed loss was lowest
    diverged_lr: float | None   # where the loss passed `diverge` x its best (None: never)
    reason: str

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def lr_find(model: nn.Module, data: ImageSet, preprocess: Preprocess, *,
            config: TrainConfig = TrainConfig(), start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 100, beta: float = 0.9, diverge: float = 4.0,
            device: str | torch.device = "cpu", verbose: bool = True,
            augment: Callable | None = None, task: Task = CLASSIFICATION) -> LRFindResult:
    """Run the range test on `model` with `config`'s optimizer, loss and batch size.

    The learning rate goes from `start_lr` to `end_lr` geometrically over `steps`
    mini-batches (cycling through `data` as often as needed). The test stops early once
    the smoothed loss exceeds `diverge` times its best value, climbs back above its
    first value after falling, or is not finite. The
    model's weights and mode are restored before returning.

    Raises TrainingError when the loss diverges at once (it never fell below its first
    value): the start learning rate is then too high for this model and data; and when
    it neither fell nor diverged: the range ends too low.
    """
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr-find needs 0 < start lr < end lr; got {start_lr:g} and {end_lr:g}")
    if steps < 10:
        raise ConfigError(f"lr-find needs at least 10 steps to see a trend; got {steps}")
    if not 0 <= beta < 1:
        raise ConfigError(f"loss smoothing beta must be in [0, 1); got {beta}")
    if len(data) == 0:
        raise ConfigError("lr-find needs at least one training image")
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    recorder = _RangeTest(start_lr, (end_lr / start_lr) ** (1 / (steps - 1)), steps, beta,
                          diverge, progress(steps, "lr-find", "batch", enabled=verbose))
    batch_size = min(config.batch_size, len(data))
    # fit's own loop, with the rate set before every step and nothing else changing it
    run = config.replace(lr=start_lr, batch_size=batch_size, schedule="constant", warmup=0.0,
                         patience=0, val_split=0.0, epochs=-(-steps // -(-len(data) // batch_size)))
    try:
        fit(model, data, config=run, preprocess=preprocess, callbacks=[recorder], device=device,
            augment=augment, task=task, verbose=False)
    except TrainingError:  # the loss became NaN or infinite: the range test's divergence
        if not recorder.started:
            raise
        recorder.record(math.inf)
    finally:
        recorder.bar.close()
        model.load_state_dict(saved)
        model.train(was_training)
    lrs, losses, smoothed = recorder.lrs, recorder.losses, recorder.smoothed
    diverged_lr = recorder.diverged_lr
    return _suggest(lrs, losses, smoothed, start_lr, end_lr, diverged_lr)


class _RangeTest(Callback):
    """Sets the rate before each step (growing geometrically), records the loss after
    it and stops fit when the smoothed loss blows up or the steps are done."""

    def __init__(self, start_lr: float, ratio: float, steps: int, beta: float, diverge: float,
                 bar) -> None:
        self.start_lr, self.ratio, self.steps, self.beta, self.diverge = start_lr, ratio, steps, beta, diverge
        self.bar = bar
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.avg, self.best, self.diverged_lr = 0.0, math.inf, None
        self.started = False

    def on_batch_start(self, state: TrainState) -> None:
        self.started = True
        self.lr = self.start_lr * self.ratio ** len(self.lrs)
        for group in state.optimizer.param_groups:
            group["lr"] = self.lr

    def record(self, value: float) -> bool:
        """Add one step's loss; True when the test should stop."""
        self.lrs.append(self.lr)
        self.losses.append(value)
        if not math.isfinite(value):
            self.smoothed.append(math.inf)
            self.diverged_lr = self.lr
            return True
        self.avg = self.beta * self.avg + (1 - self.beta) * value
        smooth = self.avg / (1 - self.beta ** len(self.lrs))  # bias correction for the first steps
        self.smoothed.append(smooth)
        self.best = min(self.best, smooth)
        # blown up: far above its best, or back above the start after falling
        if smooth > self.diverge * self.best or (self.best < 0.9 * self.smoothed[0]
                                                 and smooth > self.smoothed[0]):
            self.diverged_lr = self.lr
            return True
        self.bar.update(1)
        return len(self.lrs) >= self.steps

    def on_batch_end(self, state: TrainState) -> None:
        state.stop = self.record(float(state.loss))


def _suggest(lrs: list[float], losses: list[float], smoothed: list[float], start_lr: float,
             end_lr: float, diverged_lr: float | None) -> LRFindResult:
    """Steepest descent of the smoothed loss (per decade of lr) before its minimum."""
    finite = [s for s in smoothed if math.isfinite(s)]
    i_min = min(range(len(finite)), key=finite.__getitem__) if finite else 0
    # "at once": the loss never went below where it started before blowing up
    if diverged_lr is not None and (i_min == 0 or finite[i_min] >= 0.99 * finite[0]):
        raise TrainingError(
            f"lr-find: the loss diverged at once (at lr {diverged_lr:.3g}, step {len(lrs)}, "
            f"never falling below its first value {losses[0]:.4g}); the start learning rate "
            f"{start_lr:g} is too high for this model and data; try --start-lr "
            f"{start_lr / 1000:g}")
    if diverged_lr is None and finite[i_min] > 0.97 * finite[0]:
        raise TrainingError(
            f"lr-find: the loss hardly fell between lr {start_lr:g} and {lrs[-1]:.3g} "
            f"({finite[0]:.4g} -> at best {finite[i_min]:.4g}); the range ends too low "
            f"(raise --end-lr) or the model cannot learn from these images (try convlab overfit)")
    # skip the first steps: the moving average has not settled there
    lo = min(max(2, i_min // 10), max(i_min - 1, 0))
    if i_min - lo >= 2:
        log_lr = torch.tensor(lrs[:i_min + 1], dtype=torch.float64).log10()
        loss = torch.tensor(finite[:i_min + 1], dtype=torch.float64)
        slope = torch.gradient(loss, spacing=(log_lr,))[0]  # d loss / d log10(lr)
        i_best = lo + int(slope[lo:i_min].argmin())
        per_decade = float(slope[i_best])
    else:  # the minimum came within the first steps: nothing to differentiate
        i_best, per_decade = i_min, 0.0
    suggestion = lrs[i_best]
    reason = (f"steepest descent of the smoothed loss at lr {suggestion:.2g} (it falls "
              f"{-per_decade:.3g} per tenfold increase there, from {finite[0]:.3g} at the "
              f"start); the loss is lowest at lr {lrs[i_min]:.2g} ({finite[i_min]:.3g})")
    if diverged_lr is not None:
        reason += f" and diverges from lr {diverged_lr:.2g} on"
    else:
        reason += f"; it did not diverge up to lr {lrs[-1]:.2g}"
    reason += ("; the suggestion lies before both, where learning is fastest and still "
               "stable")
    return LRFindResult(lrs, losses, smoothed, start_lr, end_lr, suggestion, lrs[i_min],
                        diverged_lr, reason)
