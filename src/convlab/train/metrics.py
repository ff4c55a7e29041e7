"""Exact evaluation: loss, top-1/top-5, per-class accuracy and the confusion matrix."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batches, ImageSet, Preprocess
from .distributed import all_reduce_sum, world

__all__ = ["EvalResult", "evaluate", "predict_logits"]


@dataclass
class EvalResult:
    """Counts from one pass over a set; every sample counted once, across ranks too."""

    n: int
    loss: float
    top1: float
    top5: float
    confusion: torch.Tensor          # int64 (K, K): rows true class, columns predicted
    classes: list[str] = field(default_factory=list)

    @property
    def per_class(self) -> dict[str, float]:
        """Accuracy per true class (NaN where the class has no samples)."""
        totals = self.confusion.sum(1).clamp(min=1)
        acc = self.confusion.diag().double() / totals
        return {c: (float(a) if int(self.confusion[i].sum()) else float("nan"))
                for i, (c, a) in enumerate(zip(self.classes, acc))}

    def to_dict(self) -> dict:
        return {"n": self.n, "loss": self.loss, "top1": self.top1, "top5": self.top5,
                "top1_error": 1 - self.top1, "top5_error": 1 - self.top5,
                "per_class": self.per_class, "confusion": self.confusion.tolist(),
                "classes": self.classes}


@torch.inference_mode()
def predict_logits(model: nn.Module, data: ImageSet, preprocess: Preprocess, *,
                   batch_size: int = 500, device: torch.device | str = "cpu",
                   channels_last: bool = False) -> torch.Tensor:
    """Logits (N, K) for every image, in order (one process)."""
    model.eval()
    outs = [model(x).float() for x, _ in Batches(data, batch_size, preprocess, device=device,
                                                 channels_last=channels_last)]
    return torch.cat(outs).cpu()


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageSet, preprocess: Preprocess, *,
             batch_size: int = 500, device: torch.device | str = "cpu",
             channels_last: bool = False, loss_fn=None) -> EvalResult:
    """Evaluate `model` on all of `data`. Under torch.distributed each rank takes a
    disjoint share and the counts are summed, so the result equals one process's."""
    rank, size = world()
    k = data.num_classes
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    top5 = torch.zeros((), dtype=torch.int64)
    confusion = torch.zeros(k * k, dtype=torch.int64)
    batches = Batches(data, batch_size, preprocess, device=device, rank=rank, world_size=size,
                      channels_last=channels_last)
    for x, y in batches:
        logits = model(x).float()
        if logits.shape[1] != k:
            from ..errors import DatasetError
            raise DatasetError(f"the model predicts {logits.shape[1]} classes but the data has {k}")
        loss = loss_fn(logits, y) * len(y) if loss_fn else F.cross_entropy(logits, y, reduction="sum")
        loss_sum += float(loss)
        pred = logits.argmax(1)
        confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k)
        top = logits.topk(min(5, k), dim=1).indices
        top5 += int((top == y[:, None]).any(1).sum())
    model.train(was_training)
    totals = torch.cat([loss_sum.view(1), top5.double().view(1), confusion.double()])
    all_reduce_sum(totals)
    confusion = totals[2:].round().long().view(k, k)
    n = int(confusion.sum())
    return EvalResult(n=n, loss=float(totals[0]) / max(n, 1),
                      top1=float(confusion.diag().sum()) / max(n, 1),
                      top5=float(totals[1]) / max(n, 1), confusion=confusion,
                      classes=list(data.classes))
