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
from ..data import Batches, ImageSet, Preprocess
from ..errors import ConfigError, TrainingError
from ..progress import progress
from .loop import training_layout, uses_bf16
from ..tasks import make_loss
from .optim import make_optimizer

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
            augment: Callable | None = None) -> LRFindResult:
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
    device = torch.device(device)
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    model.to(device)
    amp = uses_bf16(config.precision, device)
    with training_layout(model, config.channels_last) as channels_last:
        torch.manual_seed(config.seed)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad],
                                   config.replace(lr=start_lr))
        loss_fn = make_loss(config)
        batches = Batches(data, min(config.batch_size, len(data)), preprocess, shuffle=True,
                          seed=config.seed, device=device, augment=augment,
                          channels_last=channels_last, drop_last=len(data) >= config.batch_size)
        ratio = (end_lr / start_lr) ** (1 / (steps - 1))
        lrs: list[float] = []
        losses: list[float] = []
        smoothed: list[float] = []
        avg, best, diverged_lr = 0.0, math.inf, None
        bar = progress(steps, "lr-find", "batch", enabled=verbose)
        model.train()
        try:
            epoch = 0
            while len(lrs) < steps and diverged_lr is None:
                epoch += 1
                batches.set_epoch(epoch)
                for x, y in batches:
                    lr = start_lr * ratio ** len(lrs)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        loss = loss_fn(model(x), y)  # as fit computes it, in config.precision
                    value = float(loss.detach())
                    lrs.append(lr)
                    losses.append(value)
                    if not math.isfinite(value):
                        smoothed.append(math.inf)
                        diverged_lr = lr
                        break
                    avg = beta * avg + (1 - beta) * value
                    smooth = avg / (1 - beta ** len(lrs))  # bias correction for the first steps
                    smoothed.append(smooth)
                    best = min(best, smooth)
                    # blown up: far above its best, or back above the start after falling
                    if smooth > diverge * best or (best < 0.9 * smoothed[0] and smooth > smoothed[0]):
                        diverged_lr = lr
                        break
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    bar.update(1)
                    if len(lrs) >= steps:
                        break
        finally:
            bar.close()
            model.load_state_dict(saved)
            model.train(was_training)
    return _suggest(lrs, losses, smoothed, start_lr, end_lr, diverged_lr)


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
