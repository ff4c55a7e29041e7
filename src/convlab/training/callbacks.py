"""What the training loop shares with the code that plugs into it: the per-epoch
record, the state callbacks see, the Callback base class and fit's result.

Schedules, regularisers, early stopping and the transfer strategies build on these
without importing the loop itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import TrainConfig

__all__ = ["EpochStats", "TrainState", "Callback", "FitResult"]


@dataclass
class EpochStats:
    """What one epoch measured; one line of metrics.jsonl."""

    epoch: int
    loss: float
    acc: float | None           # None where the task measures nothing on training batches
    val_loss: float | None
    val_acc: float | None       # the task's validation score (detection: mAP50)
    lr: float
    seconds: float
    extra: dict = field(default_factory=dict)
    val_metric: str = "acc"     # what val_acc is: 'acc', or 'mAP50' for detection

    def line(self, epochs: int) -> str:
        """Keras's epoch line: 'Epoch 2/3 - loss: 0.1184 - acc: 0.9648 - ... - 4.1s'."""
        parts = [f"Epoch {self.epoch}/{epochs}", f"loss: {self.loss:.4f}"]
        if self.acc is not None:
            parts.append(f"acc: {self.acc:.4f}")
        if self.val_loss is not None:
            parts += [f"val_loss: {self.val_loss:.4f}", f"val_{self.val_metric}: {self.val_acc:.4f}"]
        parts += [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                  for k, v in self.extra.items()]
        parts.append(f"{self.seconds:.1f}s")
        return " - ".join(parts)


@dataclass
class TrainState:
    """What callbacks see and may change. Setting `stop` ends training: from
    on_batch_end, after that batch (the epoch is then summed up as it stands); from
    any other event, after the current epoch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    epoch: int = 0              # 1-based once training starts
    batch: int = 0              # batch index within the epoch
    step: int = 0               # optimizer steps so far
    steps_per_epoch: int = 0
    loss: torch.Tensor | None = None
    history: list[EpochStats] = field(default_factory=list)
    stop: bool = False


class Callback:
    """Base class: override the events you need."""

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_batch_start(self, state: TrainState) -> None: ...
    def on_batch_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState, stats: EpochStats) -> None: ...
    def on_fit_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict:
        """Saved with each checkpoint so a resumed run continues the same way."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class FitResult:
    history: list[EpochStats]
    epochs_run: int
    stopped_early: bool = False
