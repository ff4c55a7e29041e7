"""Training-time augmentation as batched tensor operations, and normalisation statistics.

`Augment(cfg)` is the `augment` hook of Batches / fit / train: a float (B, C, H, W)
batch in 0..1 -> an augmented batch of the same shape, on the batch's device, with
fresh randomness for every image in every epoch (torch's global RNG, which fit seeds
and saves for an exact resume). It is only ever given to the training batches;
validation and test data go through `Preprocess` alone.

Order: random crop with padding, one affine warp for random-resized crop + rotation +
translation, flips, colour jitter, PCA lighting, random erasing.

`normalization(images, preprocess, mode)` computes per-channel mean/std or the mean
image from the training split; the result is a Preprocess, so it is saved in meta.json
and prediction uses it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugmentConfig
from ..errors import ConfigError
from .imageset import ImageSet
from .preprocess import Preprocess

__all__ = ["Augment", "make_augment", "check_augment", "normalization", "preview_batch",
           "IMAGENET_PCA"]

# AlexNet's (Krizhevsky et al. 2012) eigenvalues and eigenvectors (columns) of the
# ImageNet RGB pixel covariance, pixels in 0..1
IMAGENET_PCA = (
    (0.2175, 0.0188, 0.0045),
    ((-0.5675, 0.7192, 0.4009),
     (-0.5808, -0.0045, -0.8140),
     (-0.5836, -0.6948, 0.4203)),
)
ERASE_AREA = (0.02, 0.33)   # random erasing (Zhong et al. 2017): area fraction ...
ERASE_RATIO = (0.3, 3.3)    # ... and aspect ratio of the rectangle
CROP_RATIO = (3 / 4, 4 / 3)  # random-resized crop aspect ratios (the Inception crop)


def _uniform(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def check_augment(cfg: AugmentConfig, size: tuple[int, int]) -> None:
    """Refuse settings that make no sense for images of `size` (H, W), before training."""
    h, w = size
    if cfg.crop and 2 * cfg.crop >= min(h, w):
        raise ConfigError(f"random crop: padding {cfg.crop} px per side on {h}x{w} images lets a "
                          f"crop be mostly padding; use at most {max(min(h, w) // 2 - 1, 0)} px")


class Augment:
    """The augmentation an AugmentConfig describes, as a callable on float batches."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __repr__(self) -> str:
        return f"Augment({self.cfg.describe()})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.crop:
            x = pad_crop(x, c.crop)
        if c.resized_crop or c.rotate or c.translate:
            x = affine(x, c.resized_crop, c.rotate, c.translate)
        if c.hflip:
            x = flip(x, c.hflip, -1)
        if c.vflip:
            x = flip(x, c.vflip, -2)
        if c.jitter:
            x = colour_jitter(x, c.jitter)
        if c.lighting:
            x = pca_lighting(x, c.lighting)
        if c.erase:
            x = random_erase(x, c.erase)
        return x


def make_augment(cfg: AugmentConfig, size: tuple[int, int] | None = None) -> Augment | None:
    """An Augment for `cfg`, or None when every augmentation is off."""
    if size is not None:
        check_augment(cfg, size)
    return Augment(cfg) if cfg.active else None


def pad_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad `pad` pixels per side, then take a random crop of the original size per image."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))                                     # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), device=x.device)
    rows = dy + torch.arange(h, device=x.device)                            # (B, H)
    cols = dx + torch.arange(w, device=x.device)                            # (B, W)
    n = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]]     # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()                             # (B, C, H, W)


def affine(x: torch.Tensor, min_area: float, degrees: float, translate: float) -> torch.Tensor:
    """One bilinear warp per image: random-resized crop (area in [min_area, 1], aspect
    3/4..4/3, scaled back to the full size), rotation in +-degrees, shift in +-translate
    of the side. Pixels from outside the image are zero."""
    b, dev = len(x), x.device
    sx = sy = torch.ones(b, device=dev)
    cx = cy = torch.zeros(b, device=dev)
    if min_area:
        area = _uniform(b, min_area, 1.0, dev)
        ratio = torch.exp(_uniform(b, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), dev))
        sx = (area * ratio).sqrt().clamp(max=1.0)       # crop width / image width
        sy = (area / ratio).sqrt().clamp(max=1.0)
        # crop centre in -1..1 coordinates, so that every sample stays between the outer
        # pixel centres (no zero padding creeps in at the crop's edges)
        cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - sx) * (x.shape[-1] - 1) / x.shape[-1]
        cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - sy) * (x.shape[-2] - 1) / x.shape[-2]
    angle = _uniform(b, -degrees, degrees, dev) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    tx = cx + _uniform(b, -2 * translate, 2 * translate, dev)  # the side spans 2 units
    ty = cy + _uniform(b, -2 * translate, 2 * translate, dev)
    theta = torch.stack([torch.stack([sx * cos, -sx * sin, tx], 1),
                         torch.stack([sy * sin, sy * cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def flip(x: torch.Tensor, p: float, dim: int) -> torch.Tensor:
    """Flip each image along `dim` (-1 horizontal, -2 vertical) with probability p."""
    mask = (torch.rand(len(x), device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(dim), x)


def colour_jitter(x: torch.Tensor, s: float) -> torch.Tensor:
    """Brightness, contrast and (for RGB) saturation, each scaled by a factor in [1-s, 1+s]."""
    b, dev = len(x), x.device
    lo = max(0.0, 1 - s)
    x = x * _uniform(b, lo, 1 + s, dev).view(-1, 1, 1, 1)
    grey = x.mean(1, keepdim=True)                                          # (B, 1, H, W)
    mean = grey.mean((2, 3), keepdim=True)                                  # (B, 1, 1, 1)
    x = (x - mean) * _uniform(b, lo, 1 + s, dev).view(-1, 1, 1, 1) + mean
    if x.shape[1] == 3:
        grey = x.mean(1, keepdim=True)
        x = (x - grey) * _uniform(b, lo, 1 + s, dev).view(-1, 1, 1, 1) + grey
    return x.clamp(0.0, 1.0)


def pca_lighting(x: torch.Tensor, std: float) -> torch.Tensor:
    """AlexNet's lighting noise: add eigvec @ (alpha * eigval), alpha ~ N(0, std), per image.
    Greyscale images get the channel mean of that RGB offset."""
    eigval = torch.tensor(IMAGENET_PCA[0], device=x.device, dtype=x.dtype)
    eigvec = torch.tensor(IMAGENET_PCA[1], device=x.device, dtype=x.dtype)
    alpha = torch.randn(len(x), 3, device=x.device, dtype=x.dtype) * std  # (B, 3)
    rgb = (alpha * eigval) @ eigvec.T                                       # (B, 3)
    offset = rgb if x.shape[1] == 3 else rgb.mean(1, keepdim=True)         # (B, C)
    return (x + offset[:, :, None, None]).clamp(0.0, 1.0)


def random_erase(x: torch.Tensor, p: float) -> torch.Tensor:
    """With probability p per image, fill one random rectangle (2-33% of the area,
    aspect 0.3-3.3) with uniform noise."""
    b, _, h, w = x.shape
    dev = x.device
    area = _uniform(b, *ERASE_AREA, dev) * h * w
    ratio = torch.exp(_uniform(b, math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), dev))
    eh = (area * ratio).sqrt().round().clamp(1, h)
    ew = (area / ratio).sqrt().round().clamp(1, w)
    top = (torch.rand(b, device=dev) * (h - eh + 1)).floor()
    left = (torch.rand(b, device=dev) * (w - ew + 1)).floor()
    r = torch.arange(h, device=dev).view(1, h, 1)
    c = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((r >= top.view(-1, 1, 1)) & (r < (top + eh).view(-1, 1, 1))
              & (c >= left.view(-1, 1, 1)) & (c < (left + ew).view(-1, 1, 1)))  # (B, H, W)
    on = torch.rand(b, device=dev) < p
    mask = (inside & on.view(-1, 1, 1))[:, None]                           # (B, 1, H, W)
    return torch.where(mask, torch.rand_like(x), x)


def normalization(data: ImageSet, preprocess: Preprocess, mode: str,
                  chunk: int = 4096) -> Preprocess:
    """`preprocess` with mean/std measured on `data` (the training split).

    'channel': per-channel mean and std. 'image': the mean image (C x H x W at the model's
    input size) is subtracted, then each channel is divided by its std around that mean.
    'model': unchanged (the registry's normalisation).
    """
    if mode == "model":
        return preprocess
    if mode not in ("channel", "image"):
        raise ConfigError(f"unknown normalisation '{mode}'; valid: model, channel, image")
    total = None
    sq = None
    n = len(data)
    if n == 0:
        raise ConfigError("normalisation statistics need at least one training image")
    for i in range(0, n, chunk):
        x = preprocess.fit(data.images[i:i + chunk]).double().div_(255.0)  # (b, C, H, W)
        s, q = x.sum(0), (x * x).sum(0)                                     # (C, H, W)
        total = s if total is None else total + s
        sq = q if sq is None else sq + q
    mean_img = total / n                                                    # (C, H, W)
    var_img = sq / n - mean_img ** 2
    if mode == "channel":
        mean = mean_img.mean((1, 2))                                        # (C,)
        var = (sq / n).mean((1, 2)) - mean ** 2
        return preprocess.replace(mean=tuple(mean.tolist()),
                                  std=tuple(var.clamp(min=1e-12).sqrt().tolist()),
                                  mean_image=None)
    std = var_img.mean((1, 2)).clamp(min=1e-12).sqrt()                      # (C,)
    return preprocess.replace(mean=(0.0,) * len(std), std=tuple(std.tolist()),
                              mean_image=tuple(mean_img.flatten().tolist()))


def preview_batch(images: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (N, C, H, W) in 0..1, augmented as training would."""
    return Augment(cfg)(images.float().div(255.0)).clamp(0.0, 1.0)
