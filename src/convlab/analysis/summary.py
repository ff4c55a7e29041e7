"""Layer statistics of a registered model by name, and the model comparison."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError, ForwardFailed, ModelError
from ..models import create_model, model_spec
from .layers import ModelStats, layer_stats

__all__ = ["parse_input", "default_input", "default_classes", "model_stats", "ModelSummary",
           "compare_models", "imagenet_top1"]


def parse_input(text: str) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224); a single side '224' keeps the model's channels (C=0).

    Two numbers are refused: '3x224' could mean channels x side or height x width."""
    parts = re.split(r"[x,×]", text.strip().lower()) if text else []
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) not in (1, 3) or any(d < 1 for d in dims):
        raise ConfigError(f"--input must look like CxHxW (e.g. 3x224x224) or a single side "
                          f"(e.g. 224) with positive integers; got '{text}'")
    if len(dims) == 1:
        return 0, dims[0], dims[0]
    if dims[0] not in (1, 3):
        raise ConfigError(f"--input channels must be 1 or 3; got {dims[0]} in '{text}'")
    return dims[0], dims[1], dims[2]


def default_input(name: str) -> tuple[int, int, int]:
    spec = model_spec(name)
    return spec.channels, spec.input_size, spec.input_size


def default_classes(name: str) -> int:
    """Classes of the model's published form: 1000 for ImageNet models, 10 for the lecture's."""
    return model_spec(name).num_classes


def model_stats(name: str, input_shape: tuple[int, int, int] | None = None,
                num_classes: int | None = None, **kwargs) -> ModelStats:
    """Per-layer statistics of registered model `name` for one image of `input_shape`
    (C, H, W; C=0 means the model's own channels). Built on the meta device, so even
    VGG-19 costs no memory. An input too small for the architecture raises ModelError
    naming the layer where the spatial size reaches zero."""
    spec = model_spec(name)
    c, h, w = input_shape or default_input(name)
    c = c or spec.channels
    num_classes = default_classes(name) if num_classes is None else num_classes
    if spec.flexible_size and h != w:
        raise ConfigError(f"model '{name}' is built for square images; got {h}x{w}, "
                          f"use --input {c}x{h}x{h}")
    size = h if spec.flexible_size else spec.input_size
    with torch.device("meta"):
        model = create_model(name, num_classes, in_chans=c, input_size=size, **kwargs).eval()
    try:
        return layer_stats(model, (c, h, w))
    except ForwardFailed as exc:
        if min(h, w) >= spec.min_input_size:
            raise  # not a size problem: a real bug
        shape = "x".join(map(str, exc.input_shape))
        raise ModelError(
            f"input {c}x{h}x{w} is too small for {name}: the spatial size reaches zero at layer "
            f"'{exc.layer}' ({exc.layer_type}, input {shape}); the smallest workable input is "
            f"{c}x{spec.min_input_size}x{spec.min_input_size}") from None


def imagenet_top1(name: str) -> float | None:
    """ImageNet-1K top-1 accuracy (%) of torchvision's IMAGENET1K_V1 weights, if it has them."""
    if model_spec(name).family != "zoo":
        return None
    try:
        from ..models.pretrained import torchvision_weights

        return float(torchvision_weights(name).meta["_metrics"]["ImageNet-1K"]["acc@1"])
    except (ValueError, KeyError, AttributeError):
        return None


@dataclass(frozen=True)
class ModelSummary:
    """One row of `convlab inspect --compare`."""

    name: str
    input: str
    params: int
    macs: int
    units: int
    connections: int
    depth: int
    top1: float | None


def compare_models(names: list[str], num_classes: int | None = None) -> list[ModelSummary]:
    """Totals of each model at its own default input size."""
    out = []
    for name in names:
        s = model_stats(name, num_classes=num_classes)
        out.append(ModelSummary(name, "x".join(map(str, s.input_shape)), s.params, s.macs,
                                s.total("units"), s.total("connections"), s.depth,
                                imagenet_top1(name)))
    return out
