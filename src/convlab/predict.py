"""Predictor: class probabilities for image files or tensors, preprocessing from meta.json."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import Run, load_run
from .data import Preprocess, decode_image
from .errors import CheckpointError, ConfigError, ModelError
from .tasks import task_of

__all__ = ["Predictor", "Prediction", "BACKENDS", "classify_images"]

BACKENDS = ("torch", "onnx")


@dataclass
class Prediction:
    """The top classes for one image, most probable first."""

    source: str
    labels: list[str]
    probs: list[float]

    def __str__(self) -> str:
        return f"{self.source}: " + ", ".join(f"{l} {p:.3f}" for l, p in zip(self.labels, self.probs))


class Predictor:
    """Predict with a run directory. The run's meta.json says the channels, size and
    normalisation, so callers pass raw images of any mode and size."""

    def __init__(self, run: Run | str | os.PathLike, device: str | torch.device = "cpu",
                 backend: str = "torch") -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend '{backend}'; valid: {', '.join(BACKENDS)}")
        self.backend = backend
        self.device = torch.device(device)
        self.onnx = None
        if backend == "onnx":  # ONNX Runtime runs RUN/model.onnx (made by `convlab export`)
            from .checkpoint import read_meta
            from .export import OnnxModel, onnx_path

            path = run.path if isinstance(run, Run) else Path(run)
            meta = run.meta if isinstance(run, Run) else read_meta(path)
            self.onnx = OnnxModel(onnx_path(path))
            self.run = None
            self.preprocess = Preprocess.from_dict(meta["preprocess"])
            self.classes = list(meta["classes"])
            self.task = task_of(meta)
            if self.task.name != "classification":
                raise CheckpointError(f"{path} is a {self.task.name} run; use "
                                      f"convlab.detect.load_detector('{path}', backend='onnx')")
            return
        self.run = run if isinstance(run, Run) else load_run(run, device)
        self.preprocess = self.run.preprocess
        self.classes = self.run.classes
        self.task = task_of(self.run.meta)
        if self.task.name != "classification":
            raise CheckpointError(f"{self.run.path} is a {self.task.name} run: its output is boxes, "
                                  f"not class probabilities; use convlab.detect.load_detector("
                                  f"'{self.run.path}') (convlab detect --model RUN)")

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W), any size and 1/3 channels -> probabilities (N, K)."""
        if self.onnx is not None:
            return self.task.decode(self.onnx.logits(self.preprocess(images)))
        x = self.preprocess(images.to(self.device))
        return self.task.decode(self.run.model(x)).cpu()

    def load_images(self, paths: list[str | os.PathLike]) -> list[torch.Tensor]:
        return [decode_image(p, self.preprocess.channels) for p in paths]

    def predict_files(self, paths: list[str | os.PathLike], top: int = 5) -> list[Prediction]:
        """Top-`top` classes for each image file (decoded with Pillow, any mode or size)."""
        out = []
        for p, img in zip(paths, self.load_images(paths)):
            probs = self.probabilities(img[None])[0]
            k = min(top, len(self.classes))
            val, idx = probs.topk(k)
            out.append(Prediction(str(Path(p)), [self.classes[i] for i in idx.tolist()], val.tolist()))
        return out


@torch.inference_mode()
def classify_images(images: list[torch.Tensor] | torch.Tensor, model: str = "efficientnet_lite0", *,
                    top: int = 5, weights: str | os.PathLike | None = None
                    ) -> list[list[tuple[str, float]]]:
    """Top-`top` ImageNet labels with probabilities for uint8 images (C, H, W) of any
    size: the model's published preprocessing, its pretrained weights, names offline."""
    from .models import default_preprocess, pretrained_model
    from .models.pretrained import imagenet_classes

    if top < 1:
        raise ModelError(f"--top must be at least 1; got {top}")
    net = pretrained_model(model, num_classes=1000, weights=weights).eval()
    pre = default_preprocess(model, 3)[0]
    names = imagenet_classes()
    out = []
    for img in images:
        probs = net(pre(img[None])).float().softmax(1)[0]  # (1000,)
        val, idx = probs.topk(min(top, len(names)))
        out.append([(names[i], float(v)) for v, i in zip(val, idx.tolist())])
    return out
