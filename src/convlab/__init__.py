"""convlab: convolutional image classifiers on your own machine.

Train from scratch, transfer-learn from an ImageNet backbone, look inside a network,
and teach new classes from a webcam. The Python API mirrors the `convlab` CLI.
"""
from __future__ import annotations

__version__ = "0.1.0"

from ._runtime import tune_malloc

tune_malloc()

from .checkpoint import Run, load_run, save_run  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .data import Batches, ImageSet, Preprocess, list_datasets, load_dataset  # noqa: E402
from .errors import (CheckpointError, ConfigError, ConvlabError, DatasetError,  # noqa: E402
                     ModelError, TrainingError)
from .models import count_parameters, create_model, list_models  # noqa: E402
from .predict import Prediction, Predictor  # noqa: E402
from .train import Callback, EvalResult, evaluate, fit, train  # noqa: E402
from .train.lr_find import lr_find  # noqa: E402
from .train.sanity import gradcheck, overfit  # noqa: E402
from .report import write_report  # noqa: E402

__all__ = [
    "__version__", "Run", "load_run", "save_run", "TrainConfig", "Batches", "ImageSet",
    "Preprocess", "list_datasets", "load_dataset", "CheckpointError", "ConfigError",
    "ConvlabError", "DatasetError", "ModelError", "TrainingError", "count_parameters",
    "create_model", "list_models", "Prediction", "Predictor", "Callback", "EvalResult",
    "evaluate", "fit", "train",
    "lr_find", "gradcheck", "overfit", "write_report",
]
