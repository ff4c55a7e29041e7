"""The model registry: one visible table of entries and one factory, `create_model`."""
from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..errors import ModelError, unknown
from . import lecture, recipe_models
from .spec import ModelSpec
from .zoo import zoo_specs

__all__ = ["ModelSpec", "MODELS", "list_models", "list_pretrained", "model_spec", "create_model",
           "pretrained_model", "default_preprocess", "count_parameters"]


def _lecture(cls: type[nn.Module], sized: bool = True) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int, input_size: int, **kw) -> nn.Module:
        return cls(num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kw) \
            if sized else cls(num_classes=num_classes, in_chans=in_chans, **kw)
    return build


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec("mnist_linear", _lecture(lecture.MnistLinear),
              "mnist1: one linear layer, pixels -> classes", flexible_size=True, head="network"),
    ModelSpec("mnist_mlp", _lecture(lecture.MnistMLP),
              "mnist2: 20 hidden units, BatchNorm, ReLU", flexible_size=True, head="network.3"),
    ModelSpec("mnist_cnn", _lecture(lecture.MnistCNN),
              "mnist3: 32 5x5 kernels, BatchNorm, ReLU, max pool, linear",
              flexible_size=True, min_input_size=2, head="network2"),
    ModelSpec("lenet5", _lecture(lecture.LeNet5, sized=False),
              "LeNet-5: tanh, average-pool subsampling, 32x32 input",
              input_size=32, min_input_size=32, resize="pad", head="classifier.2"),
    ModelSpec("small_cnn", _lecture(lecture.SmallCNN),
              "Keras-style: 4 conv+pool blocks, dropout, dense 512-128",
              input_size=64, min_input_size=16, channels=3, flexible_size=True, head="classifier.6"),
    ModelSpec("fmnist_resnet", _lecture(recipe_models.FmnistResNet, sized=False),
              "small residual CNN (ResNet-9 style, 32-64-128) of the fmnist-94 recipe",
              family="recipe", flexible_size=True, min_input_size=8, head="fc"),
    *zoo_specs(),
]}


def list_pretrained() -> list[str]:
    """Registered models whose ImageNet weights load offline (bundled with a package), by name."""
    return sorted(n for n, s in MODELS.items() if s.bundled is not None)


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, optionally of one family ('lecture', 'zoo', ...)."""
    return [n for n, s in MODELS.items() if family is None or s.family == family]


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelError(unknown("model", name, MODELS, "see: convlab models"))
    return MODELS[name]


def create_model(name: str, num_classes: int = 10, in_chans: int | None = None,
                 pretrained: bool = False, input_size: int | None = None, **kwargs) -> nn.Module:
    """Build a registered model for `num_classes` classes and 1 or 3 input channels.

    input_size (H = W) matters for models whose layer sizes follow from it
    (`ModelSpec.flexible_size`); it defaults to the model's own input size.
    """
    spec = model_spec(name)
    in_chans = spec.channels if in_chans is None else in_chans
    input_size = spec.input_size if input_size is None else input_size
    if in_chans not in (1, 3):
        raise ModelError(f"in_chans must be 1 or 3; got {in_chans}")
    if num_classes < 1:
        raise ModelError(f"num_classes must be at least 1; got {num_classes}")
    if input_size < spec.min_input_size:
        raise ModelError(f"model '{name}' needs input of at least {spec.min_input_size}x"
                         f"{spec.min_input_size}; got {input_size}x{input_size}")
    try:
        model = spec.build(num_classes, in_chans, input_size, **kwargs)
    except TypeError as exc:
        raise ModelError(f"model '{name}': bad arguments {kwargs} ({exc})") from None
    if pretrained:
        if spec.bundled is None:
            raise ModelError(f"model '{name}' has no bundled pretrained weights; pass a weights "
                             f"file instead (offline backbones: {', '.join(list_pretrained())})")
        spec.load_weights(model)
    return model


def pretrained_model(name: str, num_classes: int | None = None, in_chans: int = 3, *,
                     weights: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Registered model `name` with ImageNet weights: from `weights` (a state-dict file)
    when given, else the bundled ones, else downloaded by name when online.

    num_classes defaults to the published head (1000); another number keeps the
    backbone and a freshly initialised classifier.
    """
    spec = model_spec(name)
    num_classes = spec.num_classes if num_classes is None else num_classes
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return spec.load_weights(model, weights)


def default_preprocess(name: str, in_chans: int | None = None,
                       image_size: int | None = None) -> tuple[Preprocess, int]:
    """(preprocessing, input size) for model `name` fed images of `image_size` pixels."""
    spec = model_spec(name)
    in_chans = spec.channels if in_chans is None else in_chans
    size = image_size if (spec.flexible_size and image_size) else spec.input_size
    mean = spec.mean if len(spec.mean) in (1, in_chans) else spec.mean[:1]
    std = spec.std if len(spec.std) in (1, in_chans) else spec.std[:1]
    if in_chans == 1 and len(spec.mean) == 3:  # greyscale into an RGB-normalised model
        mean, std = (sum(spec.mean) / 3,), (sum(spec.std) / 3,)
    native = (image_size, image_size) if spec.resize == "pad" and image_size else None
    return Preprocess(in_chans, (size, size), spec.resize, spec.crop_fraction, mean=mean, std=std,
                      interpolation=spec.interpolation, image_size=native), size


def count_parameters(name: str, num_classes: int = 10, in_chans: int | None = None,
                     input_size: int | None = None) -> int:
    """Parameters of a model, counted on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = create_model(name, num_classes, in_chans, input_size=input_size)
    return sum(p.numel() for p in model.parameters())
