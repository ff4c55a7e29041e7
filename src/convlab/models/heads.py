"""Heads on embeddings (transfer 'features'), stored as plain tensors, and the model
that puts a frozen backbone and a head together.

Every head maps embeddings (N, D) to logits (N, K) whose softmax is its class
probabilities; its shape and options are a small JSON dict (`config`), its state a
safetensors file, so a features run never holds a pickle: the k-nearest-neighbour
head keeps its memory bank as buffers, the SVM head the SVM's weights as a Linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HEAD_KINDS
from ..errors import CheckpointError, ConfigError

__all__ = ["HEAD_KINDS", "EmbeddingHead", "LinearHead", "MLPHead", "KNNHead", "SVMHead",
           "build_head", "load_head", "FeaturesModel", "load_features_model"]


class EmbeddingHead(nn.Module):
    """Base: standardises embeddings with the training set's mean and std (buffers)."""

    kind = ""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_scale(self, emb: torch.Tensor) -> None:
        self.mean.copy_(emb.mean(0))
        std = emb.std(0, correction=0)
        # a unit (nearly) constant on the training set must not amplify noise at test time
        self.std.copy_(std.clamp_min(max(1e-3, 0.05 * float(std.median()))))

    def scaled(self, emb: torch.Tensor) -> torch.Tensor:
        return (emb - self.mean) / self.std

    @property
    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "num_classes": self.num_classes}

    @torch.inference_mode()
    def predict_proba(self, emb: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, K) for embeddings (N, D)."""
        self.eval()
        return self(emb.to(self.mean.device).float()).float().softmax(1)


class LinearHead(EmbeddingHead):
    """Softmax regression on standardised embeddings."""

    kind = "linear"

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.fc(self.scaled(emb))  # (N, D) -> (N, K)


class SVMHead(LinearHead):
    """A linear SVM (trained by scikit-learn); logits are its decision values."""

    kind = "svm"


class MLPHead(EmbeddingHead):
    """One or two hidden layers with ReLU and dropout."""

    kind = "mlp"

    def __init__(self, dim: int, num_classes: int, hidden: tuple[int, ...] = (256,),
                 dropout: float = 0.2) -> None:
        super().__init__(dim, num_classes)
        hidden = tuple(int(h) for h in hidden)
        if not 1 <= len(hidden) <= 2 or min(hidden) < 1:
            raise ConfigError(f"an mlp head has one or two hidden layers of at least 1 unit; "
                              f"got {list(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1); got {dropout}")
        self.hidden, self.dropout = hidden, float(dropout)
        layers: list[nn.Module] = []
        for cin, cout in zip((dim,) + hidden, hidden):
            layers += [nn.Linear(cin, cout), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden[-1], num_classes))
        self.net = nn.Sequential(*layers)

    @property
    def config(self) -> dict:
        return {**super().config, "hidden": list(self.hidden), "dropout": self.dropout}

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.net(self.scaled(emb))


class KNNHead(EmbeddingHead):
    """k nearest neighbours by cosine similarity; probabilities are the vote shares.

    The training embeddings (L2-normalised) and one-hot labels are buffers, so the
    head saves as tensors and exports to ONNX (MatMul, TopK, Gather).
    """

    kind = "knn"

    def __init__(self, dim: int, num_classes: int, size: int, k: int = 5) -> None:
        super().__init__(dim, num_classes)
        if k < 1:
            raise ConfigError(f"k must be at least 1; got {k}")
        self.size, self.k = size, min(k, size)
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("onehot", torch.zeros(size, num_classes))

    def remember(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        self.bank.copy_(F.normalize(emb.float(), dim=1))
        self.onehot.copy_(F.one_hot(labels, self.num_classes).float())

    @property
    def config(self) -> dict:
        return {**super().config, "size": self.size, "k": self.k}

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        sims = F.normalize(emb.float(), dim=1) @ self.bank.T      # (N, M)
        idx = sims.topk(self.k, dim=1).indices                    # (N, k)
        votes = self.onehot[idx].sum(1) / self.k                  # (N, k, K) -> (N, K)
        return votes.clamp_min(1e-6).log()                        # softmax gives the shares back


def build_head(config: dict) -> EmbeddingHead:
    """An untrained head of the shape `config` describes (the `config` a head reports)."""
    try:
        kind, dim, k = config["kind"], int(config["dim"]), int(config["num_classes"])
        if kind == "linear":
            return LinearHead(dim, k)
        if kind == "svm":
            return SVMHead(dim, k)
        if kind == "mlp":
            return MLPHead(dim, k, tuple(config.get("hidden", (256,))), float(config.get("dropout", 0.2)))
        if kind == "knn":
            return KNNHead(dim, k, int(config["size"]), int(config.get("k", 5)))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"head description {config} is incomplete ({exc})") from None
    raise CheckpointError(f"unknown head kind '{kind}'; valid: {', '.join(HEAD_KINDS)}")


class FeaturesModel(nn.Module):
    """A frozen backbone (input -> (N, D)) followed by a head ((N, D) -> (N, K))."""

    def __init__(self, backbone: nn.Module, head: EmbeddingHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).float())


def load_head(head_file, meta: dict) -> EmbeddingHead:
    """A features run's head (eval mode) from `head_file` (safetensors), strictly, with
    the shape its meta.json records; the backbone is left to the caller (the teach app
    shares one among every project's heads)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        head = build_head(meta["head"])
    except KeyError as exc:
        raise CheckpointError(f"features run meta.json lacks {exc}") from None
    try:
        missing, unexpected = load_model(head, str(head_file), strict=False)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{head_file}: cannot load the head ({exc})") from None
    if missing or unexpected:
        raise CheckpointError(f"{head_file} does not fit a {head.kind} head: missing "
                              f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    return head.eval()


def load_features_model(head_file, meta: dict) -> FeaturesModel:
    """Rebuild a features run's model: its backbone with pretrained weights (pre-logits or
    the recorded layer) and its head from `head_file` (safetensors), strictly."""
    from .backbone import FeatureExtractor
    from .registry import model_spec, pretrained_model

    if "backbone" not in meta:
        raise CheckpointError("features run meta.json lacks 'backbone'")
    info = meta["backbone"]
    head = load_head(head_file, meta)
    name = info["name"]
    backbone = pretrained_model(name, weights=info.get("weights"))
    extractor = FeatureExtractor(backbone, model_spec(name).head, info.get("layer"))
    for p in extractor.parameters():
        p.requires_grad_(False)
    return FeaturesModel(extractor, head).eval()
