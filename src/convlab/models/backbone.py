"""Any registered classifier as a backbone: pre-logit features, a chosen layer, a new
classifier, and its layers in groups from input to output (for freezing).

Every ModelSpec names its final classifier layer (`head`, a dotted path); these helpers
work from that, so one piece of code serves the lecture models and the zoo alike.

The backbone interface (held for every registered model by tests/test_contract.py):

    forward_features(model, head, x)      -> (N, D), D = the head's input width
    reset_classifier(model, head, k)      -> the model, now giving (N, k) class scores
    FeatureExtractor(model, head)(x)      -> (N, D), the same features as a module of its
                                             own (the head replaced, so it exports to ONNX)
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError

__all__ = ["get_module", "set_module", "forward_features", "FeatureExtractor", "reset_classifier",
           "layer_groups", "layer_names"]


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted `path` ('' is the model itself)."""
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        raise ModelError(f"the model has no layer '{path}'; layers: "
                         f"{', '.join(layer_names(model)[:40])} ...") from None


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted `path`."""
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path)
    get_module(model, path)  # a clear error for a wrong path
    setattr(parent, name, module)


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule, in definition order."""
    return [n for n, _ in model.named_modules() if n]


def forward_features(model: nn.Module, head: str, x: torch.Tensor) -> torch.Tensor:
    """The pre-logit features of `model` for `x`: what the classifier at `head` reads.

    Taken by a hook while the model runs, so the model is left as it is (FeatureExtractor,
    by contrast, replaces the head). A 1x1-conv head reads a map, which is averaged over
    space as the models with such a head do after it: (N, C, H, W) -> (N, C).
    """
    captured: list[torch.Tensor] = []
    hook = get_module(model, head).register_forward_pre_hook(
        lambda module, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        hook.remove()
    feats = captured[-1]
    if feats.dim() == 4:
        feats = feats.float().mean((2, 3))  # (N, C, H, W) -> (N, C)
    return feats.flatten(1)


class FeatureExtractor(nn.Module):
    """A classifier turned into an embedding model: input -> (N, D) features.

    Without `layer`, the classifier at `head` is replaced by nn.Identity, so the output
    is the pre-logit vector (after global pooling and, where the model has it, dropout
    that is inactive in eval mode). With `layer`, the output of that layer is taken
    (4-D maps are global-average-pooled: (N, C, H, W) -> (N, C)); the model still runs
    to the end, which keeps it exportable.
    """

    def __init__(self, model: nn.Module, head: str, layer: str | None = None) -> None:
        super().__init__()
        if not head:
            raise ModelError("this model does not name its classifier layer (ModelSpec.head)")
        set_module(model, head, nn.Identity())
        self.model = model
        self.layer = layer or None
        self._captured: list[torch.Tensor] = []
        if self.layer:
            get_module(model, self.layer).register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        self._captured.append(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.layer:
            out = self._captured.pop()
            self._captured.clear()
        if out.dim() == 4:
            out = out.float().mean((2, 3))  # (N, C, H, W) -> (N, C)
        return out.flatten(1)


def reset_classifier(model: nn.Module, head: str, num_classes: int) -> nn.Module:
    """Replace the classifier at `head` with a new one for `num_classes` classes.

    The classifier is a Linear layer, or a 1x1 Conv2d (SqueezeNet, TinyYOLOv2) whose
    class maps the model averages over space; the new layer is of the same kind, on the
    old one's device and dtype.
    """
    old = get_module(model, head)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes)
    elif isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1) and old.groups == 1:
        new = nn.Conv2d(old.in_channels, num_classes, 1)
    else:
        raise ModelError(f"layer '{head}' is {type(old).__name__}, not a Linear or 1x1 Conv2d "
                         f"classifier")
    new.to(old.weight.device, old.weight.dtype)
    set_module(model, head, new)
    return model


def layer_groups(model: nn.Module, head: str) -> list[list[str]]:
    """Parameter names in groups from input to output, the classifier at `head` last.

    timm models group by their own `group_matcher` (stem, each stage, the head conv);
    other models by top-level children, with a Sequential child split into its members
    (torchvision's `features.0`, `features.1`, ...).
    """
    head_prefix = f"{head}."
    names = [n for n, _ in model.named_parameters()]
    body = [n for n in names if not n.startswith(head_prefix)]
    groups: list[list[str]] = []
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        by_id = group_parameters(model, model.group_matcher(coarse=True))
        for gid in sorted(by_id):
            members = [n for n in by_id[gid] if n in body]
            if members:
                groups.append(members)
    else:
        order: dict[str, list[str]] = {}
        for n in body:
            parts = n.split(".")
            top = parts[0]
            child = getattr(model, top, None)
            key = f"{top}.{parts[1]}" if isinstance(child, nn.Sequential) and len(parts) > 2 else top
            order.setdefault(key, []).append(n)
        groups = list(order.values())
    groups.append([n for n in names if n.startswith(head_prefix)])
    return groups
