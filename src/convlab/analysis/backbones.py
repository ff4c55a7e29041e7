"""The pretrained backbones side by side: parameters, MACs, ImageNet accuracy, speed here.

    backbone_rows()        the offline backbones (bundled weights): counts from
                           convlab.analysis at each one's input size, top-1/top-5 as
                           published for its weights (the source named), images per
                           second through the embedding path measured on this machine,
                           and the embedding size
    published_rows()       the zoo's classics from torchvision's weights metadata
                           (offline): the decks' comparison chart draws them greyed

MACs are multiply-accumulates per image (FLOPs = 2 x MACs). torchvision's metadata
calls its figure GFLOPS, but it counts multiply-adds: it equals convlab's MAC count for
every model listed here (tests/test_backbones.py checks it).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..errors import ConfigError
from ..models import create_model, list_pretrained, model_spec
from ..models.backbone import get_module
from .summary import model_stats

__all__ = ["BackboneRow", "backbone_rows", "published_rows", "embedding_size", "PUBLISHED_ZOO"]

# The classics of the decks' comparison chart, as torchvision publishes their weights.
PUBLISHED_ZOO = ("alexnet", "vgg16", "googlenet", "resnet50", "densenet121", "squeezenet1_0",
                 "efficientnet_b0")


@dataclass(frozen=True)
class BackboneRow:
    """One backbone: what it costs, how accurate its weights are, how fast it runs here."""

    name: str
    input_size: int
    params: int
    macs: int                       # per image, at input_size
    top1: float | None              # ImageNet-1K validation accuracy, %
    top5: float | None
    source: str                     # where top1/top5 come from
    dim: int                        # embedding size (what the classifier reads)
    images_per_second: float | None  # measured here (None: not measured)
    offline: bool                   # bundled weights that load without a network

    def to_dict(self) -> dict:
        return asdict(self)


def embedding_size(name: str) -> int:
    """D of `name`'s pre-logit features: the input width of its classifier."""
    spec = model_spec(name)
    with torch.device("meta"):
        head = get_module(create_model(name, spec.num_classes), spec.head)
    return head.in_features if isinstance(head, torch.nn.Linear) else head.in_channels


def backbone_rows(names: list[str] | None = None, *,
                  speed: Callable[[str], float] | None = None) -> list[BackboneRow]:
    """A row per offline backbone (or per name in `names`, which must have bundled weights).

    speed(name) -> images per second, when given, measures each one here (the CLI passes
    convlab.embed.images_per_second: the embedding path)."""
    names = list_pretrained() if names is None else names
    rows = []
    for name in names:
        spec = model_spec(name)
        if spec.bundled is None:
            raise ConfigError(f"'{name}' has no offline weights; offline backbones: "
                              f"{', '.join(list_pretrained())}")
        stats = model_stats(name)
        top1, top5, source = spec.bundled.accuracy()
        rate = speed(name) if speed is not None else None
        rows.append(BackboneRow(name, spec.input_size, stats.params, stats.macs, top1, top5,
                                source, embedding_size(name), rate, True))
    return rows


def published_rows(names: tuple[str, ...] = PUBLISHED_ZOO) -> list[BackboneRow]:
    """Parameters, MACs and top-1/top-5 of torchvision's IMAGENET1K_V1 weights of each zoo
    model, all from the weights' metadata (nothing downloaded, nothing measured)."""
    from ..models.pretrained import torchvision_weights

    rows = []
    for name in names:
        weights = torchvision_weights(name)
        meta = weights.meta
        metrics = meta["_metrics"]["ImageNet-1K"]
        rows.append(BackboneRow(name, model_spec(name).input_size, int(meta["num_params"]),
                                int(round(float(meta["_ops"]) * 1e9)), float(metrics["acc@1"]),
                                float(metrics["acc@5"]),
                                f"torchvision {type(weights).__name__}.{weights.name} metadata",
                                embedding_size(name), None, False))
    return rows
