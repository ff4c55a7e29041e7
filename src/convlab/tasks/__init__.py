"""Tasks: what a kind of problem adds to the one training pipeline.

A task supplies the loss, the metrics, the decoding of the network's output and the
format of the targets; `fit`, `evaluate`, the run directory and the Predictor take
everything else from the pipeline. A run's meta.json names its task (and keeps what
the task needs to decode, such as a detector's anchors). Classification is the first
task; detection (YOLOv2: region loss, anchors, NMS, COCO mAP) the second.
"""
from __future__ import annotations

from ..errors import CheckpointError, unknown
from .classification import (CLASSIFICATION, ClassificationTask, EvalResult, Evaluator, Task,
                             make_loss)
from .detection import DetectionResult, DetectionTask

__all__ = ["Task", "Evaluator", "ClassificationTask", "CLASSIFICATION", "EvalResult", "make_loss",
           "DetectionTask", "DetectionResult", "TASKS", "task_of"]

TASKS: dict[str, type] = {"classification": ClassificationTask, "detection": DetectionTask}


def task_of(meta: dict) -> Task:
    """The task a run was trained for, as its meta.json describes it (runs written
    before tasks existed: classification)."""
    name = meta.get("task", CLASSIFICATION.name)
    if name not in TASKS:
        raise CheckpointError(unknown("task", name, TASKS, "the run was written by a newer convlab?"))
    return TASKS[name].from_meta(meta)
