"""Data: ImageSet (uint8 images + labels + class names), the named datasets and
folders, preprocessing, batches and augmentation.

Names load on first use (PEP 562), so that listing the datasets (`convlab datasets`)
does not import torch.
"""
from __future__ import annotations

import importlib

# public name -> the submodule that defines it
_API = {
    "Batches": "batches", "epoch_permutation": "batches",
    "decode_image": "images", "pil_to_tensor": "images", "resize_images": "images",
    "to_channels": "images",
    "ImageSet": "imageset", "FeatureSet": "featureset", "DetectionSet": "detectionset",
    "Preprocess": "preprocess",
    "DATASETS": "registry", "dataset_spec": "registry", "list_datasets": "registry",
    "load_dataset": "registry",
    "load_folder": "sources",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'convlab.data' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
