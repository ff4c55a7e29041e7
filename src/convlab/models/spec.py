"""ModelSpec: what the registry knows of a model: how to build it, the input it expects,
and where its pretrained weights come from (loading them is the spec's own method)."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .pretrained import BundledWeights, download_by_name, load_bundled, load_weights_file

__all__ = ["ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and what input it expects.

    build(num_classes, in_chans, input_size, **kwargs) -> nn.Module. When
    `flexible_size` is true the model is built for the data's image size (its layer
    sizes follow from it); otherwise images are brought to `input_size` by `resize`.
    A spec with `bundled` weights loads them offline: its preprocessing fields are the
    weights' own, and `bundled` holds their file, checksum, categories and accuracy.
    """

    name: str
    build: Callable[..., nn.Module]
    description: str
    family: str = "lecture"
    input_size: int = 28
    min_input_size: int = 1
    channels: int = 1
    flexible_size: bool = False
    resize: str = "resize"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    bundled: BundledWeights | None = None  # ImageNet weights that load offline
    head: str = ""  # dotted path of the final classifier layer (e.g. "fc", "classifier.6")
    interpolation: str = "bilinear"  # resize filter of the published preprocessing
    crop_fraction: float = 0.875     # 'shorter_crop': crop / resized shorter side (224/256)
    num_classes: int = 10            # classes of the published form (ImageNet: 1000)

    @property
    def load_pretrained(self) -> Callable[[nn.Module], nn.Module] | None:
        """The loader of the bundled weights (model -> model), or None without them."""
        if self.bundled is None:
            return None
        return lambda model: load_bundled(model, self.bundled, self.head)

    def load_weights(self, model: nn.Module, weights: str | os.PathLike | None = None) -> nn.Module:
        """Put pretrained weights into `model` (built from this spec): the state-dict file
        `weights` when given, else the bundled ones (checksum verified first), else the
        published ones downloaded by name (online only). A head of another size than the
        published one stays as built."""
        if weights is not None:
            load_weights_file(model, weights, head=self.head)
        elif self.bundled is not None:
            load_bundled(model, self.bundled, self.head)
        else:
            download_by_name(model, self.name, self.head)
        return model
