"""Models: the registry of lecture models and (later) the torchvision/timm zoo."""
from .registry import (MODELS, count_parameters, create_model, default_preprocess, list_models,
                       model_spec, pretrained_model)
from .spec import ModelSpec

__all__ = ["MODELS", "ModelSpec", "count_parameters", "create_model", "default_preprocess",
           "list_models", "model_spec", "pretrained_model"]
