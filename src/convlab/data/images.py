"""Decoding image files of any mode into uint8 tensors, and resizing batches."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DatasetError

__all__ = ["IMAGE_SUFFIXES", "decode_image", "pil_to_tensor", "resize_images", "to_channels"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                  ".ppm", ".pgm", ".pbm"}
# Refuse decompression bombs: a 100-megapixel image is far beyond any classifier input.
MAX_PIXELS = 100_000_000


def _to_8bit(img: Image.Image) -> Image.Image:
    """Bring 16-bit, 32-bit integer and float images to 8-bit, scaled by their range."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return img
    arr = arr.astype(np.float64)
    if img.mode.startswith("I;16") or img.mode == "I" and arr.max() <= 65535 and arr.min() >= 0:
        arr = arr / 65535.0 * 255.0 if arr.max() > 255 else arr
    else:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def pil_to_tensor(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image of any mode as uint8 (channels, H, W); alpha is composited on white."""
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 or 3; got {channels}")
    img = ImageOps.exif_transpose(img) if hasattr(img, "getexif") else img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(arr, copy=True, order="C"))


def decode_image(source: str | os.PathLike | bytes, channels: int = 3) -> torch.Tensor:
    """Decode an image file (path or bytes) to uint8 (channels, H, W).

    Any Pillow mode works (L, RGB, RGBA, P, CMYK, 16-bit, float); animated files give
    their first frame. Raises DatasetError naming the file when it is not an image.
    """
    label = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            if img.width * img.height > MAX_PIXELS:
                raise DatasetError(f"{label}: {img.width}x{img.height} pixels is over the "
                                   f"limit of {MAX_PIXELS:,}")
            img.seek(0)
            img.load()
            return pil_to_tensor(img, channels)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:
        raise DatasetError(f"{label}: not a readable image ({exc})") from None


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) images with C in {1, 3} converted to `channels` (luma for 3 -> 1)."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        y = (x.float() * w).sum(1, keepdim=True)
        return y.round().clamp(0, 255).to(x.dtype) if x.dtype == torch.uint8 else y
    raise DatasetError(f"cannot convert {c}-channel images to {channels} channels")


def resize_images(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a batch (N, C, H, W) to (H', W'), keeping uint8 input uint8."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    y = F.interpolate(x.float(), size=size, mode=mode, antialias=mode in ("bilinear", "bicubic"),
                      align_corners=False if mode in ("bilinear", "bicubic") else None)
    return y.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y


def letterbox_shape(h: int, w: int, size: int, multiple: int | None = None
                    ) -> tuple[int, int, int, int, float]:
    """The letterbox rule's geometry for an h x w image: (scaled h, scaled w, padded h,
    padded w, scale). The longer side becomes `size`; the padding reaches a `size` x
    `size` square, or with `multiple` the next multiples of it."""
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    th, tw = (size, size) if multiple is None else (-(-nh // multiple) * multiple,
                                                    -(-nw // multiple) * multiple)
    return nh, nw, th, tw, scale


def letterbox(x: torch.Tensor, size: int, multiple: int | None = None,
              mode: str = "bilinear") -> tuple[torch.Tensor, float]:
    """A detector's input rule (face-api's): scale (N, C, H, W) so the longer side is
    `size` and pad the bottom/right with zeros, to a `size` x `size` square, or with
    `multiple` to the next multiples of it (a 320x240 frame -> 320x256 for a stride-32
    grid). Returns (image, scale); a box in input pixels / scale is in the original's."""
    nh, nw, th, tw, scale = letterbox_shape(*x.shape[-2:], size, multiple)
    x = resize_images(x, (nh, nw), mode)
    return F.pad(x, (0, tw - nw, 0, th - nh)), scale


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted, by suffix."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
