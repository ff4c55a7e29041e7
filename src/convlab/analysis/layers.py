"""Per-layer records of a network: units, connections, weights, biases, MACs.

Computed apart from any rendering (see convlab.cli.inspect for the tables). The
rules are dispatched on module type (walking the class's MRO, so timm's Conv2dSame
counts as a Conv2d):

- units: output activations of layers that compute new values (conv, linear,
  pooling): W*H*N for a conv layer with N output channels. Normalisation and
  activation layers transform the same units in place and add none.
- connections: for a conv layer W*H*K*K*M*N/groups (M input, N output channels), so
  depthwise and grouped convolutions count right; M*N for a linear layer; for a
  pooling layer each output unit's window. Biases are not connections here; they are
  counted apart.
- weights: every parameter other than a bias (K*K*M*N/groups for a conv, the scale
  of a norm layer); biases: the parameters named 'bias'.
- MACs: multiply-accumulates with weights (conv and linear, equal to their
  connections); FLOPs = 2 x MACs, the convention of torch.utils.flop_counter.
- depth: the longest chain of conv/linear layers from input to output, followed
  through every tensor operation (residual adds, concatenations), so ResNet-50 has
  depth 50 and VGG-16 depth 16.

The forward pass normally runs on the meta device: shapes only, no memory, no time,
so VGG-19 and ResNet-152 are inspected in well under a second.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import ForwardFailed

__all__ = ["LayerStats", "ModelStats", "layer_stats", "KINDS", "COUNT_RULES", "layer_kind"]

KINDS = ("conv", "linear", "norm", "pool", "other")

_KIND_OF: dict[type, str] = {
    nn.modules.conv._ConvNd: "conv",
    nn.Linear: "linear",
    nn.Bilinear: "linear",
    nn.modules.batchnorm._NormBase: "norm",
    nn.GroupNorm: "norm",
    nn.LayerNorm: "norm",
    nn.LocalResponseNorm: "norm",
    nn.modules.pooling._MaxPoolNd: "pool",
    nn.modules.pooling._AvgPoolNd: "pool",
    nn.modules.pooling._AdaptiveAvgPoolNd: "pool",
    nn.modules.pooling._AdaptiveMaxPoolNd: "pool",
    nn.modules.pooling._LPPoolNd: "pool",
}


def _lookup(table: dict, module: nn.Module):
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    return None


def layer_kind(module: nn.Module) -> str:
    """'conv', 'linear', 'norm', 'pool' or 'other', by module type."""
    return _lookup(_KIND_OF, module) or "other"


# ------------------------------------------------------------------ counting rules
# Each rule: (module, input tensor, output tensor) -> (units, connections, MACs),
# per sample (the forward runs on a batch of one).

def _conv_counts(m: nn.modules.conv._ConvNd, x: torch.Tensor, y: torch.Tensor):
    units = y[0].numel()                                            # W*H*N
    fan_in = (m.in_channels // m.groups) * math.prod(m.kernel_size)  # K*K*M/groups
    return units, units * fan_in, units * fan_in


def _conv_transpose_counts(m: nn.modules.conv._ConvTransposeNd, x: torch.Tensor, y: torch.Tensor):
    # every input activation is spread over K*K*N/groups outputs
    fan_out = (m.out_channels // m.groups) * math.prod(m.kernel_size)
    conn = x[0].numel() * fan_out
    return y[0].numel(), conn, conn


def _linear_counts(m: nn.Linear, x: torch.Tensor, y: torch.Tensor):
    units = y[0].numel()
    return units, units * m.in_features, units * m.in_features      # M*N


def _window(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Total input positions read by all output positions of one channel."""
    spatial_in, spatial_out = x.shape[2:], y.shape[2:]
    if isinstance(m, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        total = 1
        for n_in, n_out in zip(spatial_in, spatial_out):
            # the windows torch uses: [floor(i*in/out), ceil((i+1)*in/out))
            total *= sum(-(-(i + 1) * n_in // n_out) - (i * n_in // n_out) for i in range(n_out))
        return total
    k = m.kernel_size
    k = (k,) * len(spatial_out) if isinstance(k, int) else tuple(k)
    return math.prod(spatial_out) * math.prod(k)


def _pool_counts(m: nn.Module, x: torch.Tensor, y: torch.Tensor):
    per_channel = math.prod(y.shape[2:]) or 1
    channels = y[0].numel() // per_channel
    return y[0].numel(), channels * _window(m, x, y), 0


COUNT_RULES: dict[type, Callable] = {
    nn.modules.conv._ConvTransposeNd: _conv_transpose_counts,
    nn.Conv1d: _conv_counts,
    nn.Conv2d: _conv_counts,
    nn.Conv3d: _conv_counts,
    nn.Linear: _linear_counts,
    nn.modules.pooling._MaxPoolNd: _pool_counts,
    nn.modules.pooling._AvgPoolNd: _pool_counts,
    nn.modules.pooling._AdaptiveAvgPoolNd: _pool_counts,
    nn.modules.pooling._AdaptiveMaxPoolNd: _pool_counts,
}

# functions that apply weights: each adds one to the depth of the tensor it makes
_WEIGHT_FUNCS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                 F.conv_transpose3d, F.linear, F.bilinear, torch.matmul, torch.mm, torch.bmm,
                 torch.addmm}
_DEPTH_ATTR = "_convlab_depth"


class _DepthMode(TorchFunctionMode):
    """Follows every tensor operation; a tensor's depth is the longest chain of weight
    layers behind it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") == "__get__":  # attribute reads (x.shape)
            return out
        depth = max((getattr(t, _DEPTH_ATTR, 0) for t in tree_flatten((args, kwargs))[0]
                     if isinstance(t, torch.Tensor)), default=0)
        if func in _WEIGHT_FUNCS:
            depth += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
                try:
                    setattr(t, _DEPTH_ATTR, depth)
                except (AttributeError, RuntimeError):
                    pass
        return out


# ------------------------------------------------------------------ records

@dataclass(frozen=True)
class LayerStats:
    """One layer (or, when grouped, one block of layers) of a network, per image."""

    name: str
    type: str                     # class name; 'Conv2d dw' depthwise, 'Conv2d g=G' grouped
    kind: str                     # conv / linear / norm / pool / other (or 'block')
    out_shape: tuple[int, ...]    # output per image, e.g. (C, H, W); () if never called
    units: int
    connections: int
    weights: int
    biases: int
    macs: int
    calls: int = 1

    @property
    def params(self) -> int:
        return self.weights + self.biases


@dataclass(frozen=True)
class ModelStats:
    """Every layer of a network for one input shape, plus the totals."""

    input_shape: tuple[int, ...]          # (C, H, W)
    output_shape: tuple[int, ...]
    layers: list[LayerStats]              # leaf layers in the order they first ran
    depth: int                            # longest chain of conv/linear layers
    blocks: dict[str, LayerStats] = field(default_factory=dict)  # containers by name

    def total(self, what: str) -> int:
        """Sum of a column ('units', 'connections', 'weights', 'biases', 'params', 'macs')."""
        return sum(getattr(r, what) for r in self.layers)

    @property
    def params(self) -> int:
        return self.total("params")

    @property
    def macs(self) -> int:
        return self.total("macs")

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def totals(self) -> dict[str, int]:
        cols = ("units", "connections", "weights", "biases", "params", "macs")
        return {c: self.total(c) for c in cols} | {"flops": self.flops, "depth": self.depth}

    def shares(self) -> dict[str, dict[str, float]]:
        """Fraction of units, connections, params and MACs in each layer kind."""
        out: dict[str, dict[str, float]] = {}
        cols = ("units", "connections", "params", "macs")
        totals = {c: self.total(c) for c in cols}
        for kind in KINDS:
            rows = [r for r in self.layers if r.kind == kind]
            if not rows:
                continue
            out[kind] = {"layers": len(rows)} | {
                c: (sum(getattr(r, c) for r in rows) / totals[c] if totals[c] else 0.0) for c in cols}
        return out

    def grouped(self, depth: int | None) -> list[LayerStats]:
        """Rows merged into their ancestors `depth` names deep (None: every leaf layer)."""
        if depth is None:
            return list(self.layers)
        merged: dict[str, list[LayerStats]] = {}
        for r in self.layers:
            key = ".".join(r.name.split(".")[:depth])
            merged.setdefault(key, []).append(r)
        out = []
        for key, rows in merged.items():
            if len(rows) == 1 and rows[0].name == key:
                out.append(rows[0])
                continue
            block = self.blocks.get(key)
            kinds = {r.kind for r in rows}
            out.append(LayerStats(
                key, block.type if block else "", kinds.pop() if len(kinds) == 1 else "block",
                block.out_shape if block else rows[-1].out_shape,
                *(sum(getattr(r, c) for r in rows)
                  for c in ("units", "connections", "weights", "biases", "macs")),
                calls=block.calls if block else 1))
        return out


def _type_name(m: nn.Module) -> str:
    name = type(m).__name__
    if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1:
        dw = m.groups == m.in_channels
        name += " dw" if dw else f" g={m.groups}"
    return name


def layer_stats(model: nn.Module, input_shape: tuple[int, ...]) -> ModelStats:
    """Run one image of `input_shape` (C, H, W) through `model` (on its own device; the
    meta device is fastest) and record every layer. Raises ForwardFailed naming the
    innermost layer that was running when the forward pass failed."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    names = {m: n for n, m in model.named_modules()}
    order: list[nn.Module] = []
    calls: dict[nn.Module, int] = {}
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    counts: dict[nn.Module, list[int]] = {}
    stack: list[tuple[nn.Module, tuple[int, ...]]] = []

    def first_tensor(obj) -> torch.Tensor | None:
        return next((t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)), None)

    def pre_hook(m, args):
        x = first_tensor(args)
        stack.append((m, tuple(x.shape[1:]) if x is not None else ()))

    def hook(m, args, out):
        stack.pop()
        if m not in calls:
            order.append(m)
            calls[m] = 0
            y = first_tensor(out)
            shapes[m] = tuple(y.shape[1:]) if y is not None else ()
        calls[m] += 1
        rule = _lookup(COUNT_RULES, m)
        x, y = first_tensor(args), first_tensor(out)
        if rule is not None and x is not None and y is not None:
            c = counts.setdefault(m, [0, 0, 0])
            for i, v in enumerate(rule(m, x, y)):
                c[i] += int(v)

    handles = []
    for m in names:
        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(hook))
    x = torch.zeros((1, *input_shape), device=device)
    try:
        with torch.no_grad(), _DepthMode():
            y = model(x)
    except (RuntimeError, ValueError, IndexError) as exc:
        if stack:
            m, shape = stack[-1]
            raise ForwardFailed(names[m], type(m).__name__, shape, exc) from exc
        raise ForwardFailed("(model)", type(model).__name__, tuple(input_shape), exc) from exc
    finally:
        for h in handles:
            h.remove()
    out = first_tensor(y)
    depth = getattr(out, _DEPTH_ATTR, 0) if out is not None else 0

    seen_params: set[int] = set()

    def own_params(m: nn.Module) -> tuple[int, int]:
        w = b = 0
        for pname, p in m.named_parameters(recurse=False):
            if p is None or id(p) in seen_params:
                continue
            seen_params.add(id(p))
            if pname == "bias" or pname.endswith("bias"):
                b += p.numel()
            else:
                w += p.numel()
        return w, b

    layers, blocks = [], {}
    uncalled = [m for m in names if m not in calls]
    for m in order + uncalled:
        leaf = next(m.children(), None) is None
        name = names[m] or "(model)"  # the top module itself: a bare layer, or own parameters
        w, b = own_params(m)
        if (leaf and m in calls) or w or b:  # never-run layers only when they hold weights
            units, conn, macs = counts.get(m, (0, 0, 0)) if leaf or m is not model else (0, 0, 0)
            layers.append(LayerStats(name, _type_name(m), layer_kind(m),
                                     shapes.get(m, ()), units, conn, w, b, macs, calls.get(m, 0)))
        if not leaf and m is not model:
            blocks[name] = LayerStats(name, _type_name(m), "block", shapes.get(m, ()),
                                      0, 0, 0, 0, 0, calls.get(m, 0))
    return ModelStats(tuple(input_shape), tuple(out.shape[1:]) if out is not None else (),
                      layers, int(depth), blocks)
