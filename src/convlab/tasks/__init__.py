"""Tasks: what a kind of problem adds to the one training pipeline.

A task supplies the loss, the metrics, the decoding of the network's output and the
format of the targets; `fit`, `evaluate`, the run directory and the Predictor take
everything else from the pipeline. Classification is the first task; detection will
be the second.
"""
from .classification import CLASSIFICATION, ClassificationTask, EvalResult, Task, make_loss

__all__ = ["Task", "ClassificationTask", "CLASSIFICATION", "EvalResult", "make_loss"]
