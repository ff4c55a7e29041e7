"""The lecture's loss criteria and optimizers, by name."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig

__all__ = ["make_optimizer", "make_loss"]


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


def make_loss(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """cross-entropy on logits; mse between softmax and one-hot; multi-class hinge."""
    if cfg.loss == "cross-entropy":
        return nn.CrossEntropyLoss(label_smoothing=getattr(cfg, "label_smoothing", 0.0))
    if cfg.loss == "mse":
        def mse(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
            return F.mse_loss(logits.softmax(1), target, reduction="sum") / (2 * len(y))
        return mse
    return nn.MultiMarginLoss()
