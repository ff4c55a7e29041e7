"""Models: the registry of lecture models, the torchvision/timm zoo and the offline
pretrained backbones."""
from .registry import (MODELS, count_parameters, create_model, default_preprocess, list_models,
                       list_pretrained, model_spec, pretrained_model)
from .spec import ModelSpec

__all__ = ["MODELS", "ModelSpec", "count_parameters", "create_model", "default_preprocess",
           "list_models", "list_pretrained", "model_spec", "pretrained_model"]
