"""Preprocessing that travels with the weights: channels, size rule and normalisation."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .images import letterbox, resize_images, to_channels

__all__ = ["Preprocess", "RESIZE_RULES"]

RESIZE_RULES = ("resize", "pad", "shorter_crop", "letterbox")


@dataclass(frozen=True)
class Preprocess:
    """How uint8 images become a model's float input; saved in every run's meta.json.

    resize: 'resize' squashes to `size`; 'pad' centre-pads (or centre-crops) to `size`
    without scaling (LeNet's 32x32 from 28x28); 'shorter_crop' scales the shorter side
    to size/crop_fraction and centre-crops `size` (ImageNet's 256 -> 224); 'letterbox'
    scales the longer side to `size` and pads the bottom/right to a square (detectors).
    mean/std are per channel in 0..1 units: x = (pixel/255 - mean) / std.
    image_size, when set, is the size the model was trained on before the rule (28x28
    for LeNet's padding): other images are first resized to it, so a photo of any size
    is treated like a training image.
    """

    channels: int = 1
    size: tuple[int, int] = (28, 28)
    resize: str = "resize"
    crop_fraction: float = 0.875
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    interpolation: str = "bilinear"
    mean_image: tuple[float, ...] | None = None  # flat C*H*W, 0..1 units, subtracted before /std
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise ConfigError(f"unknown resize rule '{self.resize}'; valid: {', '.join(RESIZE_RULES)}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3; got {self.channels}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.mean_image is not None:
            object.__setattr__(self, "mean_image", tuple(float(m) for m in self.mean_image))
            if len(self.mean_image) != self.channels * self.size[0] * self.size[1]:
                raise ConfigError(f"mean image has {len(self.mean_image)} values; a "
                                  f"{self.channels}x{self.size[0]}x{self.size[1]} input needs "
                                  f"{self.channels * self.size[0] * self.size[1]}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**fields)

    def replace(self, **changes) -> Preprocess:
        return Preprocess(**{**self.to_dict(), **changes})

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) of any size -> uint8 (N, channels, *size)."""
        x = to_channels(x, self.channels)
        if self.image_size is not None:
            x = resize_images(x, self.image_size, self.interpolation)
        h, w = self.size
        if tuple(x.shape[-2:]) == (h, w) and self.resize != "shorter_crop":
            return x  # the published centre crop applies to every size, this one included
        if self.resize == "resize":
            return resize_images(x, (h, w), self.interpolation)
        if self.resize == "letterbox":
            return letterbox(x, h, mode=self.interpolation)[0]
        if self.resize == "pad":
            dh, dw = h - x.shape[-2], w - x.shape[-1]
            # negative padding crops, so one rule serves both directions
            return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        scale = min(h, w) / self.crop_fraction / min(x.shape[-2:])
        rh, rw = max(h, round(x.shape[-2] * scale)), max(w, round(x.shape[-1] * scale))
        x = resize_images(x, (rh, rw), self.interpolation)
        top, left = (rh - h) // 2, (rw - w) // 2
        return x[..., top:top + h, left:left + w]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float (N, C, H, W) in 0..1 -> normalised model input."""
        if self.mean_image is not None:  # mean-image subtraction, then per-channel std
            img = torch.tensor(self.mean_image, device=x.device, dtype=x.dtype)
            x = x - img.view(1, self.channels, *self.size)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) of any size and channels -> float model input."""
        return self.normalize(self.fit(x).float().div_(255.0))
