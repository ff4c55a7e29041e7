"""What a network learned, as tensors ready to draw: first-layer kernels, the weights
of a linear layer on the pixels (templates), and the feature maps of chosen layers."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ModelError, unknown

__all__ = ["conv_layers", "conv_kernels", "linear_templates", "feature_maps", "diverging"]


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every Conv2d of `model` by dotted name, in definition order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def conv_kernels(model: nn.Module, layer: str | None = None) -> tuple[str, torch.Tensor, str]:
    """(layer name, kernels (N, C, K, K), note) of a conv layer (default: the first).

    Kernels over 1 or 3 input channels are returned as they are (grey or colour);
    deeper layers' kernels are averaged over their input channels (C = 1), and the
    note says so."""
    convs = conv_layers(model)
    if not convs:
        raise ModelError(f"{type(model).__name__} has no convolution layers; "
                         f"for a linear model look at its templates instead")
    if layer is None:
        layer = next(iter(convs))
    if layer not in convs:
        raise ModelError(unknown("conv layer", layer, convs))
    w = convs[layer].weight.detach().float().cpu()      # (N, M/groups, K, K)
    note = ""
    if w.shape[1] not in (1, 3):
        note = f"mean over {w.shape[1]} input channels"
        w = w.mean(1, keepdim=True)                      # (N, M, K, K) -> (N, 1, K, K)
    return layer, w, note


def linear_templates(model: nn.Module, image_shape: tuple[int, int, int],
                     layer: str | None = None) -> tuple[str, torch.Tensor]:
    """(layer name, weights (N, C, H, W)) of the linear layer that reads the pixels of a
    C x H x W image: one template per output unit (the lecture's mnist1 picture)."""
    c, h, w = image_shape
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    on_pixels = {n: m for n, m in linears.items() if m.in_features == c * h * w}
    if layer is None:
        if not on_pixels:
            raise ModelError(f"no linear layer of {type(model).__name__} reads the {c}x{h}x{w} "
                             f"pixels directly; templates need a model like mnist_linear or "
                             f"mnist_mlp (for convolutional models look at the kernels)")
        layer = next(iter(on_pixels))
    if layer not in on_pixels:
        raise ModelError(unknown("linear layer on the pixels", layer, on_pixels))
    weight = on_pixels[layer].weight.detach().float().cpu()   # (N, C*H*W)
    return layer, weight.view(-1, c, h, w)                     # (N, C*H*W) -> (N, C, H, W)


def diverging(x: torch.Tensor) -> torch.Tensor:
    """Map each item of (N, ...) to 0..1 with 0.5 at zero (symmetric around zero), for
    red/blue colour maps where the sign of a weight matters."""
    scale = x.flatten(1).abs().amax(1).clamp_min(1e-12)       # (N,)
    return x / (2 * scale.view(-1, *([1] * (x.dim() - 1)))) + 0.5


@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """Outputs (C, H, W) of the named layers for one preprocessed image x (1, C, H, W)."""
    modules = dict(model.named_modules())
    spatial = [n for n in modules if n]
    for name in layers:
        if name not in modules or not name:
            raise ModelError(unknown("layer", name, spatial, "see: convlab inspect MODEL"))
    out: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def hook(module, args, y) -> None:  # returns None: the output itself is unchanged
            out.setdefault(name, y.detach().float().cpu()[0])  # (1, C, H, W) -> (C, H, W)
        return hook
    handles = [modules[name].register_forward_hook(keeper(name)) for name in layers]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    for name in layers:
        if name not in out:
            raise ModelError(f"layer '{name}' did not run for this input")
        if out[name].dim() == 1:   # a vector layer: show it as a near-square image
            v = out[name]
            side = math.ceil(math.sqrt(v.numel()))
            out[name] = torch.nn.functional.pad(v, (0, side * side - v.numel())).view(1, side, side)
        elif out[name].dim() != 3:
            raise ModelError(f"layer '{name}' gives {tuple(out[name].shape)}, not feature maps")
    return out
