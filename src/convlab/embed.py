"""Embeddings: a pretrained backbone's last hidden layer (or a chosen one) as feature
vectors, with a content-addressed on-disk cache.

    embed_images(images, "efficientnet_lite0") -> float32 (N, D)

The cache lives in cache_root()/"embeddings"/<model key>/, where the model key hashes
the backbone name, its weights, the layer and the preprocessing; inside, each image
is keyed by a hash of its pixels and shape. New rows are written in shards of at most
1,024 images (temp file, fsync, rename), so an interrupted run keeps every finished
shard and never leaves a partial entry that could be read back. A second call on the
same images computes nothing. `Embedder(cache_dir=...)` keeps the cache elsewhere (the
teach app keeps it in its home folder), and `Embedder.embed_by_key` takes keys the caller
already has (a stored file's hash), so cached images need not even be decoded.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .data import ImageSet, Preprocess
from .errors import ConfigError, DatasetError
from .files import atomic_path, cache_root
from .models import default_preprocess, model_spec, pretrained_model
from .models.backbone import FeatureExtractor
from .models.pretrained import weights_id
from .progress import progress
from .training.distributed import broadcast_from_main, gather_shares, world

__all__ = ["embed_images", "embed_imageset", "Embedder", "backbone_preprocess", "image_keys",
           "prune_cache", "images_per_second", "EMBED_CHUNK"]

EMBED_CHUNK = 1024      # images per cache shard (what an interruption can lose at most)
_MAX_SHARDS = 64        # more shards than this are merged into one


def backbone_preprocess(backbone: str) -> Preprocess:
    """The preprocessing that travels with a backbone's pretrained weights (3 channels)."""
    return default_preprocess(backbone, 3)[0]


def image_keys(images: torch.Tensor) -> np.ndarray:
    """A 16-byte content hash per image (pixels and shape): uint8 (N, 16)."""
    flat = np.ascontiguousarray(images.cpu().numpy().reshape(len(images), -1))
    shape = str(tuple(images.shape[1:])).encode()
    out = np.empty((len(images), 16), dtype=np.uint8)
    for i, row in enumerate(flat):
        h = hashlib.blake2b(row.data, digest_size=16, person=b"convlab-img")
        h.update(shape)
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out


class _Cache:
    """Shards of (keys uint8 (M, 16), emb float32 (M, D)) in one folder per model key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def shards(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.safetensors") if not p.name.startswith("."))

    def read(self) -> dict[bytes, torch.Tensor]:
        rows: dict[bytes, torch.Tensor] = {}
        for shard in self.shards():
            try:
                t = load_file(str(shard))
                keys, emb = t["keys"].numpy(), t["emb"]
                if keys.shape != (len(emb), 16):
                    raise ValueError("keys and rows disagree")
            except (SafetensorError, OSError, KeyError, ValueError):
                shard.unlink(missing_ok=True)  # damaged (not by us: our writes are atomic)
                continue
            for k, e in zip(keys, emb):
                rows[k.tobytes()] = e
        return rows

    def write(self, keys: np.ndarray, emb: torch.Tensor) -> Path:
        name = hashlib.sha256(keys.tobytes()).hexdigest()[:24] + ".safetensors"
        path = self.folder / name
        with atomic_path(path) as tmp:
            save_file({"keys": torch.from_numpy(np.ascontiguousarray(keys)),
                       "emb": emb.float().contiguous()}, str(tmp))
        return path

    def compact(self) -> None:
        """Merge many small shards (the web app adds a few images at a time) into one."""
        shards = self.shards()
        if len(shards) > _MAX_SHARDS:
            self._rewrite(shards, self.read())

    def retain(self, keep: set[bytes]) -> int:
        """Drop the rows whose key is not in `keep`; returns how many were dropped."""
        shards = self.shards()
        rows = self.read()
        kept = {k: e for k, e in rows.items() if k in keep}
        if len(kept) < len(rows):
            self._rewrite(shards, kept)
        return len(rows) - len(kept)

    def _rewrite(self, shards: list[Path], rows: dict[bytes, torch.Tensor]) -> None:
        """Replace `shards` by one shard of `rows` (none when empty)."""
        merged = None
        if rows:
            keys = np.stack([np.frombuffer(k, dtype=np.uint8) for k in rows])
            merged = self.write(keys, torch.stack(list(rows.values())))
        for s in shards:  # every row of these that is kept is in the merged shard now
            if s != merged:
                s.unlink(missing_ok=True)


@dataclass
class EmbedStats:
    images: int = 0
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0


class Embedder:
    """A frozen backbone (eval mode, channels_last) that turns uint8 images into feature
    vectors, with the embeddings cache. Build it once and call `embed` many times."""

    def __init__(self, backbone: str = "efficientnet_lite0", *, layer: str | None = None,
                 weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 cache: bool = True, image_size: int | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        """cache_dir: where the cache keeps its folder per model key (default
        cache_root()/"embeddings")."""
        spec = model_spec(backbone)
        self.backbone, self.layer = backbone, layer or None
        self.weights = None if weights is None else str(weights)
        self.device = torch.device(device)
        self.preprocess = backbone_preprocess(backbone)
        if image_size is not None:  # a smaller input than the published one: faster, coarser
            self.preprocess = self.preprocess.replace(size=(image_size, image_size))
        model = pretrained_model(backbone, weights=weights)
        self.model: nn.Module = FeatureExtractor(model, spec.head, self.layer).eval().to(self.device)
        self.model.to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        # unset (None) preprocessing fields are left out, so a new optional field keeps old keys
        pre = {k: v for k, v in self.preprocess.to_dict().items() if v is not None}
        key = json.dumps({"backbone": backbone, "weights": weights_id(weights, backbone),
                          "layer": self.layer,
                          "preprocess": pre}, sort_keys=True)
        self.key = hashlib.sha256(key.encode()).hexdigest()[:20]
        folder = Path(cache_dir) if cache_dir is not None else cache_root() / "embeddings"
        self.cache = _Cache(folder / self.key) if cache else None
        self.stats = EmbedStats()

    @property
    def identity(self) -> dict:
        """What a features run records about its backbone (meta.json)."""
        return {"name": self.backbone, "layer": self.layer, "weights": self.weights,
                "weights_id": weights_id(self.weights, self.backbone)}

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 (B, D), no cache."""
        x = self.preprocess(images.to(self.device))           # (B, 3, 224, 224)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float().cpu()                    # (B, D)

    def embed(self, images: torch.Tensor, *, batch_size: int = 64, show_progress: bool = True,
              report: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """uint8 images (N, C, H, W), any size and 1 or 3 channels -> float32 (N, D).

        report(done, N), when given, is called after the cache lookup and after every
        batch with the number of images whose embedding is known so far."""
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise DatasetError("embed_images needs uint8 images (N, C, H, W); got "
                               f"{getattr(images, 'dtype', type(images).__name__)} with shape "
                               f"{tuple(getattr(images, 'shape', ()))}")
        if images.shape[1] not in (1, 3):
            raise DatasetError(f"images must have 1 or 3 channels; got {images.shape[1]}")
        keys = image_keys(images) if self.cache is not None else None
        return self._embed(len(images), keys, lambda idx: images[idx], batch_size=batch_size,
                           show_progress=show_progress, report=report)

    def embed_by_key(self, keys: np.ndarray, load: Callable[[list[int]], torch.Tensor], *,
                     batch_size: int = 64, show_progress: bool = True,
                     report: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Embeddings of N images named by content keys the caller already has, uint8
        (N, 16) (a hash of the file each image comes from): float32 (N, D).

        Only images the cache lacks are loaded: load(indices) -> uint8 (B, C, H, W) for
        those positions. Two images may share a key only when their pixels are equal.
        report as for `embed`."""
        keys = np.asarray(keys, dtype=np.uint8)
        if keys.ndim != 2 or keys.shape[1] != 16:
            raise DatasetError(f"embedding keys must be uint8 (N, 16); got shape {keys.shape}")
        return self._embed(len(keys), keys, load, batch_size=batch_size,
                           show_progress=show_progress, report=report)

    def _embed(self, n: int, keys: np.ndarray | None, load: Callable[[list[int]], torch.Tensor], *,
               batch_size: int, show_progress: bool,
               report: Callable[[int, int], None] | None) -> torch.Tensor:
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1; got {batch_size}")
        t0 = time.perf_counter()
        rank, size = world()  # under torchrun: rank 0 reads the cache, each rank embeds a share
        known = self.cache.read() if self.cache is not None and rank == 0 else {}
        rows: list[torch.Tensor | None] = [known.get(k.tobytes()) for k in keys] if keys is not None \
            else [None] * n
        todo = [i for i, r in enumerate(rows) if r is None]
        # identical images inside one call are computed once
        first: dict[bytes | int, int] = {}
        fills: dict[int, int] = {}  # rows each computed image fills (its duplicates too)
        for i in todo:
            j = first.setdefault(keys[i].tobytes() if keys is not None else i, i)
            fills[j] = fills.get(j, 0) + 1
        unique = list(first.values())
        ready = n - len(todo)
        if report is not None:
            report(ready, n)
        if size > 1:  # rank 0's list of images to compute, split r::size across the ranks
            unique = broadcast_from_main(torch.tensor(unique, dtype=torch.int64) if rank == 0
                                         else None, torch.int64).tolist()
        mine = unique[rank::size]
        bar = progress(len(mine), f"embed ({self.backbone})", "img",
                       enabled=show_progress and rank == 0)
        for c in range(0, len(mine), EMBED_CHUNK):
            chunk = mine[c:c + EMBED_CHUNK]
            outs = []
            for b in range(0, len(chunk), batch_size):
                idx = chunk[b:b + batch_size]
                outs.append(self.forward(load(idx)))
                bar.update(len(idx))
                if report is not None:
                    ready += sum(fills.get(i, 0) for i in idx)
                    report(ready, n)
            emb = torch.cat(outs)                              # (chunk, D)
            for i, e in zip(chunk, emb):
                rows[i] = e
            if self.cache is not None:
                self.cache.write(keys[chunk], emb)
        bar.close()
        if size > 1:  # every rank's share (its cache shards already written) back in order
            shares = [rows[i] for i in mine]
            done = torch.stack(shares) if shares else torch.zeros(0, self.dim)
            for i, e in zip(unique, gather_shares(done, len(unique))):
                rows[i] = e
        for i in todo:
            if rows[i] is None:
                rows[i] = rows[first[keys[i].tobytes()]]
        if self.cache is not None and unique and rank == 0:
            self.cache.compact()
        self.stats = EmbedStats(n, n - len(todo), len(unique), time.perf_counter() - t0)
        if n == 0:
            return torch.zeros(0, self.dim)
        if size > 1:  # rows rank 0 found in its cache: its result is everyone's
            return broadcast_from_main(torch.stack(rows).float() if rank == 0 else None,
                                       torch.float32)
        return torch.stack(rows).float()                       # (N, D)

    @property
    def dim(self) -> int:
        return int(self.forward(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape[1])


def images_per_second(backbone: str, *, batch_size: int = 16, batches: int = 2) -> float:
    """Images per second of `backbone`'s embedding path (uint8 in, the weights'
    preprocessing, channels_last, inference mode, features out; no cache), timed over
    `batches` batches after one warm-up, with torch's current thread count. The images
    are noise of the size the preprocessing resizes from (256 for a 224 crop), so the
    resize and crop cost what they cost on photos."""
    if batch_size < 1 or batches < 1:
        raise ConfigError(f"batch size and batches must be at least 1; got {batch_size} and "
                          f"{batches}")
    embedder = Embedder(backbone, cache=False)
    side = int(round(embedder.preprocess.size[0] / model_spec(backbone).crop_fraction))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch_size, 3, side, side), dtype=torch.uint8, generator=gen)
    embedder.forward(x)
    t0 = time.perf_counter()
    for _ in range(batches):
        embedder.forward(x)
    return batch_size * batches / (time.perf_counter() - t0)


_EMBEDDERS: dict[tuple, Embedder] = {}


def _embedder(backbone: str, layer: str | None, weights, device, cache: bool,
              image_size: int | None) -> Embedder:
    key = (backbone, layer, None if weights is None else str(weights), str(device), cache, image_size)
    if key not in _EMBEDDERS:
        if len(_EMBEDDERS) >= 2:
            _EMBEDDERS.pop(next(iter(_EMBEDDERS)))
        _EMBEDDERS[key] = Embedder(backbone, layer=layer, weights=weights, device=device, cache=cache,
                                   image_size=image_size)
    return _EMBEDDERS[key]


def prune_cache(cache_dir: str | os.PathLike, keep: set[bytes]) -> int:
    """Drop every cached row whose key is not in `keep`, in each model's folder under
    `cache_dir` (an Embedder's cache_dir); returns how many rows were dropped."""
    root = Path(cache_dir)
    if not root.is_dir():
        return 0
    return sum(_Cache(folder).retain(keep) for folder in sorted(root.iterdir()) if folder.is_dir())


def embed_images(images: torch.Tensor, backbone: str = "efficientnet_lite0", *,
                 layer: str | None = None, batch_size: int = 64, cache: bool = True,
                 progress: bool = True, weights: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", image_size: int | None = None) -> torch.Tensor:
    """Feature vectors of uint8 images (N, C, H, W) of any size: float32 (N, D).

    backbone: a registered model with pretrained weights (efficientnet_lite0 by
    default; each offline backbone, `models.list_pretrained()`, gives D = 1280);
    layer: a dotted layer name to take instead of the pre-logit vector (its maps are
    average-pooled); weights: a state-dict file instead of the bundled/published
    weights; image_size: the input size instead of the backbone's published one. With
    `cache`, results are stored on disk keyed by image content, backbone, weights, layer
    and preprocessing, and a second call on the same images computes nothing.
    """
    return _embedder(backbone, layer, weights, device, cache, image_size).embed(
        images, batch_size=batch_size, show_progress=progress)


def embed_imageset(data: ImageSet, backbone: str = "efficientnet_lite0", **kw) -> torch.Tensor:
    """embed_images over an ImageSet's images: float32 (N, D)."""
    return embed_images(data.images, backbone, **kw)
