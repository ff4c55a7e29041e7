"""Exact evaluation over a whole set, batched and (under torch.distributed) shared
between processes; the task says what is counted (classification: loss, top-1/top-5,
per-class accuracy and the confusion matrix)."""
from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..data import Batches, ImageSet, Preprocess
from ..tasks import CLASSIFICATION, EvalResult, Task
from .distributed import all_reduce_sum, gather_objects, world

__all__ = ["EvalResult", "evaluate", "predict_logits", "score_logits"]


def score_logits(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], *,
                 loss_fn=None, task: Task = CLASSIFICATION):
    """The EvalResult of outputs already computed for a whole set (one process): the
    task's counts and loss, as evaluate() sums them batch by batch. loss_fn defaults to
    the task's loss under a default TrainConfig (classification: cross-entropy)."""
    loss_fn = loss_fn or task.loss(TrainConfig())
    meter = task.evaluator(list(classes))
    meter.update(logits, labels)
    loss_sum = float(loss_fn(logits, labels)) * len(labels) if len(labels) else 0.0
    return meter.result(loss_sum, lambda t: t, lambda o: [o])


def _batch_for(batch_size: int, preprocess: Preprocess | None) -> int:
    """At most `batch_size`, and few enough large images that one batch's activations
    stay in a few hundred MB (500 MNIST digits, 159 images at 224x224, 46 at 416x416)."""
    if preprocess is None:
        return batch_size
    h, w = preprocess.size
    return min(batch_size, max(16, 8_000_000 // (h * w)))


@torch.inference_mode()
def predict_logits(model: nn.Module, data: ImageSet, preprocess: Preprocess, *,
                   batch_size: int = 500, device: torch.device | str = "cpu",
                   channels_last: bool = False) -> torch.Tensor:
    """Logits (N, K) for every image, in order (one process)."""
    model.eval()
    outs = [model(x).float() for x, _ in Batches(data, _batch_for(batch_size, preprocess),
                                                 preprocess, device=device,
                                                 channels_last=channels_last)]
    return torch.cat(outs).cpu()


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageSet, preprocess: Preprocess, *,
             batch_size: int = 500, device: torch.device | str = "cpu",
             channels_last: bool = False, loss_fn=None, task: Task = CLASSIFICATION):
    """Evaluate `model` on all of `data` through the task's evaluator (classification:
    EvalResult, detection: DetectionResult). Under torch.distributed each rank takes a
    disjoint share and the results are combined, so they equal one process's. loss_fn (mean over a batch) defaults to the task's
    loss under a default TrainConfig (classification: cross-entropy)."""
    loss_fn = loss_fn or task.loss(TrainConfig())
    rank, size = world()
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    meter = task.evaluator(list(data.classes))
    batches = Batches(data, _batch_for(batch_size, preprocess), preprocess, device=device,
                      rank=rank, world_size=size, channels_last=channels_last)
    for x, y in batches:
        logits = model(x).float()
        meter.update(logits, y)
        loss_sum += float(loss_fn(logits, y)) * len(y)
    model.train(was_training)
    return meter.result(loss_sum, all_reduce_sum, gather_objects)
