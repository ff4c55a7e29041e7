"""Image classification: integer class labels, softmax outputs, top-1/top-5 and the
confusion matrix."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AugmentConfig, TrainConfig
from ..errors import DatasetError

__all__ = ["Task", "Evaluator", "ClassificationTask", "CLASSIFICATION", "EvalResult", "make_loss"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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

    headline = "acc"

    @property
    def score(self) -> float:
        """The number the epoch line and early stopping follow (higher is better)."""
        return self.top1

    def epoch_extras(self) -> dict:
        """Numbers for the epoch line besides val_loss and the score: none."""
        return {}

    def summary(self) -> dict:
        """The test entry of a run's meta.json."""
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "n": self.n}

    def to_dict(self) -> dict:
        return {"n": self.n, "loss": self.loss, "top1": self.top1, "top5": self.top5,
                "top1_error": 1 - self.top1, "top5_error": 1 - self.top5,
                "per_class": self.per_class, "confusion": self.confusion.tolist(),
                "classes": self.classes}


class Evaluator(Protocol):
    """Accumulates one pass over a set. `result` gets this process's summed loss,
    `reduce` (a tensor summed over processes) and `gather` (a picklable object -> every
    process's), both identities in one process, so every sample counts once."""

    def update(self, output: torch.Tensor, targets: torch.Tensor) -> None: ...
    def result(self, loss_sum: float, reduce: Callable[[torch.Tensor], torch.Tensor],
               gather: Callable[[object], list]): ...


class Task(Protocol):
    """What the pipeline asks of a task. Training counts are float64 tensors summed over
    batches (and over processes under torch.distributed); evaluation goes through the
    task's Evaluator, whose result has `score` (higher is better), `headline` (its
    name), `epoch_extras()`, `summary()` and `to_dict()`."""

    name: str

    def check_config(self, config: TrainConfig) -> None: ...
    def image_augment(self, augment: AugmentConfig) -> AugmentConfig: ...
    def augment(self, config: TrainConfig, image_augment: Callable | None) -> Callable | None: ...
    def loss(self, config: TrainConfig) -> Loss: ...
    def check_targets(self, targets: torch.Tensor, num_classes: int, where: str) -> None: ...
    def train_counts(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...
    def train_metrics(self, counts: torch.Tensor, n: int) -> dict[str, float]: ...
    def evaluator(self, classes: list[str]) -> Evaluator: ...
    def decode(self, output: torch.Tensor): ...


def make_loss(cfg: TrainConfig) -> Loss:
    """cross-entropy on logits (with cfg.label_smoothing); mse between softmax and
    one-hot; multi-class hinge."""
    if cfg.loss == "cross-entropy":
        return nn.CrossEntropyLoss(label_smoothing=getattr(cfg, "label_smoothing", 0.0))
    if cfg.loss == "mse":
        def mse(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
            return F.mse_loss(logits.softmax(1), target, reduction="sum") / (2 * len(y))
        return mse
    return nn.MultiMarginLoss()


class _Counts:
    """Classification's evaluator: eval_counts summed over batches, then over processes."""

    def __init__(self, task: ClassificationTask, classes: list[str]) -> None:
        self.task, self.classes = task, list(classes)
        self.counts: torch.Tensor | None = None

    def update(self, output: torch.Tensor, targets: torch.Tensor) -> None:
        c = self.task.eval_counts(output, targets, len(self.classes))
        self.counts = c if self.counts is None else self.counts + c

    def result(self, loss_sum: float, reduce, gather=None) -> EvalResult:
        k = len(self.classes)
        counts = self.counts if self.counts is not None else self.task.eval_counts(
            torch.zeros(0, k), torch.zeros(0, dtype=torch.int64), k)  # this rank saw no sample
        totals = reduce(torch.cat([torch.tensor([loss_sum], dtype=torch.float64), counts]))
        return self.task.eval_result(totals[1:], float(totals[0]), self.classes)


class ClassificationTask:
    """Targets are int64 labels (N,) in 0..K-1; the network outputs logits (N, K)."""

    name = "classification"

    @classmethod
    def from_meta(cls, meta: dict) -> ClassificationTask:
        return CLASSIFICATION

    def meta(self) -> dict:
        return {}

    def evaluator(self, classes: list[str]) -> _Counts:
        return _Counts(self, classes)

    def check_config(self, config: TrainConfig) -> None:
        """Every TrainConfig suits classification."""

    def image_augment(self, augment: AugmentConfig) -> AugmentConfig:
        """The augmentation applied to the images alone: all of it."""
        return augment

    def augment(self, config: TrainConfig, image_augment: Callable | None) -> Callable | None:
        """The training batches' augmentation: the image augmentation itself."""
        return image_augment

    def loss(self, config: TrainConfig) -> Loss:
        return make_loss(config)

    def check_targets(self, targets: torch.Tensor, num_classes: int, where: str) -> None:
        """Raise DatasetError unless `targets` are class indices for `num_classes` classes."""
        if targets.dtype != torch.int64 or targets.dim() != 1:
            raise DatasetError(f"{where}: classification needs int64 labels of shape (N,); "
                               f"got {targets.dtype} {tuple(targets.shape)}")
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise DatasetError(f"{where}: labels must lie in 0..{num_classes - 1}; found "
                               f"{int(targets.min())}..{int(targets.max())}")

    def train_counts(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[correct top-1] of one training batch, for the epoch line's accuracy."""
        return (output.detach().argmax(1) == targets).sum().double().view(1)

    def train_metrics(self, counts: torch.Tensor, n: int) -> dict[str, float]:
        return {"acc": float(counts[0]) / max(n, 1)}

    def eval_counts(self, output: torch.Tensor, targets: torch.Tensor,
                    num_classes: int) -> torch.Tensor:
        """[top-5 hits, confusion (K*K, rows true class)] of one batch, on the CPU."""
        k = num_classes
        if output.shape[1] != k:
            raise DatasetError(f"the model predicts {output.shape[1]} classes but the data has {k}")
        pred = output.argmax(1)
        confusion = torch.bincount((targets * k + pred).cpu(), minlength=k * k)
        top = output.topk(min(5, k), dim=1).indices
        top5 = (top == targets[:, None]).any(1).sum().cpu()
        return torch.cat([top5.view(1), confusion]).double()

    def eval_result(self, counts: torch.Tensor, loss_sum: float, classes: list[str]) -> EvalResult:
        """The summed eval_counts (and loss) of a whole set -> its EvalResult."""
        k = len(classes)
        confusion = counts[1:].round().long().view(k, k)
        n = int(confusion.sum())
        return EvalResult(n=n, loss=loss_sum / max(n, 1), top1=float(confusion.diag().sum()) / max(n, 1),
                          top5=float(counts[0]) / max(n, 1), confusion=confusion, classes=classes)

    def decode(self, output: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) -> class probabilities (N, K)."""
        return output.float().softmax(1)


CLASSIFICATION = ClassificationTask()
