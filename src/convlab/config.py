"""Configuration as frozen dataclasses; each is saved into a run's meta.json."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .errors import ConfigError

__all__ = ["TrainConfig", "OPTIMIZERS", "LOSSES"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
LOSSES = ("cross-entropy", "mse", "hinge")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained (not what model or data)."""

    epochs: int = 2                 # passes over the training split
    batch_size: int = 100           # images per optimizer step (global, across ranks)
    lr: float = 1e-3                # step size
    optimizer: str = "adam"         # sgd | momentum | nesterov | adam | adamw
    momentum: float = 0.9           # for momentum and nesterov
    weight_decay: float = 0.0       # L2 penalty (decoupled for adamw)
    loss: str = "cross-entropy"     # cross-entropy | mse (on softmax) | hinge (multi-class margin)
    val_split: float = 0.1          # fraction held out for validation (0 = none)
    seed: int = 0                   # weights, split and batch order
    channels_last: bool = True      # NHWC memory layout for 4-D conv activations
    sync_bn: bool = False           # BatchNorm statistics over the global batch across ranks

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1; got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1; got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive; got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer '{self.optimizer}'; valid: {', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss '{self.loss}'; valid: {', '.join(LOSSES)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0; got {self.weight_decay}")
        if not 0.0 <= self.val_split < 1.0:
            raise ConfigError(f"validation split must be in [0, 1); got {self.val_split}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes) -> TrainConfig:
        return replace(self, **changes)
