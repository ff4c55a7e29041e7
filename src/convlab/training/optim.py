"""The lecture's optimizers, by name (the loss comes from the task: convlab.tasks)."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config import TrainConfig

__all__ = ["make_optimizer"]


def make_optimizer(params: Iterable | list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """sgd | momentum | nesterov | adam | adamw, with cfg.lr and cfg.weight_decay."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.optimizer == "nesterov", weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
