"""Tasks: what a kind of problem adds to the one training pipeline.

A task supplies the loss, the metrics, the decoding of the network's output and the
format of the targets; `fit`, `evaluate`, the run directory and the Predictor take
everything else from the pipeline. A run's meta.json names its task. Classification
is the first task; detection will be the second.
"""
from __future__ import annotations

from ..errors import CheckpointError, unknown
from .classification import CLASSIFICATION, ClassificationTask, EvalResult, Task, make_loss

__all__ = ["Task", "ClassificationTask", "CLASSIFICATION", "EvalResult", "make_loss", "TASKS",
           "task_of"]

TASKS: dict[str, Task] = {t.name: t for t in [CLASSIFICATION]}


def task_of(meta: dict) -> Task:
    """The task a run was trained for (runs written before tasks existed: classification)."""
    name = meta.get("task", CLASSIFICATION.name)
    if name not in TASKS:
        raise CheckpointError(unknown("task", name, TASKS, "the run was written by a newer convlab?"))
    return TASKS[name]
