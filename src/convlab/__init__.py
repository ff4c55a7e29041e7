"""convlab: convolutional networks on your own machine.

Train from scratch, transfer-learn from an ImageNet backbone, look inside a network,
and teach new classes from a webcam. The Python API mirrors the `convlab` CLI.

Importing convlab is cheap and changes nothing in the process: the public names below
are loaded on first use (PEP 562), so `convlab --version` never imports torch, and the
speed settings (malloc tuning, thread counts) are turned on by the CLI and by training,
not by the import.
"""
from __future__ import annotations

import importlib

from ._version import __version__

# public name -> the module that defines it (one visible table, no star imports)
_API = {
    "Run": "checkpoint", "load_run": "checkpoint", "save_run": "checkpoint",
    "TrainConfig": "config",
    "Batches": "data", "ImageSet": "data", "Preprocess": "data", "list_datasets": "data",
    "load_dataset": "data",
    "CheckpointError": "errors", "ConfigError": "errors", "ConvlabError": "errors",
    "DatasetError": "errors", "ModelError": "errors", "TrainingError": "errors",
    "count_parameters": "models", "create_model": "models", "list_models": "models",
    "Prediction": "predict", "Predictor": "predict",
    "Callback": "training", "EvalResult": "training", "evaluate": "training", "fit": "training",
    "train": "training",
    "lr_find": "training.lr_find", "gradcheck": "training.sanity", "overfit": "training.sanity",
    "write_report": "figures.report",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'convlab' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
