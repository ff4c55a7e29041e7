"""Exact evaluation over a whole set, batched and (under torch.distributed) shared
between processes; the task says what is counted (classification: loss, top-1/top-5,
per-class accuracy and the confusion matrix)."""
from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..data import Batches, ImageSet, Preprocess
from ..tasks import CLASSIFICATION, EvalResult, Task
from .distributed import all_reduce_sum, world

__all__ = ["EvalResult", "evaluate", "predict_logits", "score_logits"]


def score_logits(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], *,
                 loss_fn=None, task: Task = CLASSIFICATION) -> EvalResult:
    """The EvalResult of outputs already computed for a whole set (one process): the
    task's counts and loss, as evaluate() sums them batch by batch. loss_fn defaults to
    the task's loss under a default TrainConfig (classification: cross-entropy)."""
    loss_fn = loss_fn or task.loss(TrainConfig())
    counts = task.eval_counts(logits, labels, len(classes))
    loss_sum = float(loss_fn(logits, labels)) * len(labels) if len(labels) else 0.0
    return task.eval_result(counts, loss_sum, list(classes))


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
             channels_last: bool = False, loss_fn=None, task: Task = CLASSIFICATION) -> EvalResult:
    """Evaluate `model` on all of `data`: the task's counts, summed over batches. Under
    torch.distributed each rank takes a disjoint share and the counts are summed, so
    the result equals one process's. loss_fn (mean over a batch) defaults to the task's
    loss under a default TrainConfig (classification: cross-entropy)."""
    loss_fn = loss_fn or task.loss(TrainConfig())
    rank, size = world()
    k = data.num_classes
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    counts = None
    batches = Batches(data, batch_size, preprocess, device=device, rank=rank, world_size=size,
                      channels_last=channels_last)
    for x, y in batches:
        logits = model(x).float()
        c = task.eval_counts(logits, y, k)
        counts = c if counts is None else counts + c
        loss_sum += float(loss_fn(logits, y)) * len(y)
    model.train(was_training)
    if counts is None:  # this rank's share was empty: the counts of no samples
        counts = task.eval_counts(torch.zeros(0, k), torch.zeros(0, dtype=torch.int64), k)
    totals = torch.cat([loss_sum.view(1), counts])
    all_reduce_sum(totals)
    return task.eval_result(totals[1:], float(totals[0]), list(data.classes))
