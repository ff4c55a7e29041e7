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
- receptive field (ReceptiveField, by RF_RULES): the input pixels one output unit
  sees (size), the input pixels between neighbouring units (jump, the product of the
  strides so far) and the input coordinate of the centre of unit 0's field (start;
  pixel i is centred on i, so padding makes it smaller). A conv or pooling layer with
  kernel K, stride S, padding P and dilation D turns (size r, jump j, start s) into
  (r + D(K-1)j, jS, s + (D(K-1)/2 - P)j): AlexNet's conv1 sees 11 pixels, pool1 19,
  conv2 51 and the last pool 195. Layers that mix the whole input (Linear, pooling to
  1x1) are 'global'. Operations between layers (residual adds, concatenations) take
  the union of their inputs' fields; a 1x1 map broadcast over a larger one (the
  channel gates of squeeze-and-excitation) is left out, since it scales the units
  without moving where they look.

The forward pass normally runs on the meta device: shapes only, no memory and no
arithmetic, so even VGG-19 and ResNet-152 are cheap to inspect (bench/inspect_speed.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import ForwardFailed

__all__ = ["LayerStats", "ModelStats", "layer_stats", "KINDS", "COUNT_RULES", "layer_kind",
           "ReceptiveField", "RF_RULES"]

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


# ------------------------------------------------------------------ receptive fields

@dataclass(frozen=True)
class ReceptiveField:
    """Where the units of one layer look in the input image, per spatial axis (H, W).

    size: input pixels one unit sees; jump: input pixels between neighbouring units;
    start: input coordinate of the centre of unit 0's field (pixel i is centred on i).
    `is_global`: every unit depends on the whole input (Linear, pooling to 1x1), so
    size, jump and start are empty.
    """

    size: tuple[int, ...] = ()
    jump: tuple[int, ...] = ()
    start: tuple[float, ...] = ()
    is_global: bool = False

    def box(self, index: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """(first, end) input pixel along each axis of the field of the unit at `index`
        (y, x), end exclusive. It may reach past the image where the layers pad."""
        if self.is_global:
            raise ValueError("a global unit sees the whole input; it has no box")
        out = []
        for i, r, j, s in zip(index, self.size, self.jump, self.start):
            first = s + i * j - (r - 1) / 2          # always whole: padding is whole pixels
            out.append((int(round(first)), int(round(first)) + r))
        return tuple(out)


GLOBAL = ReceptiveField(is_global=True)


def _per_axis(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _window_rf(rf: ReceptiveField | None, kernel, stride, padding, dilation=1
               ) -> ReceptiveField | None:
    """The field after a sliding window (conv or pool) over a map with field `rf`."""
    if rf is None or rf.is_global:
        return rf
    n = len(rf.size)
    k, s, p, d = (_per_axis(v, n) for v in (kernel, stride, padding, dilation))
    span = [di * (ki - 1) for ki, di in zip(k, d)]            # the dilated kernel's reach
    return ReceptiveField(tuple(r + e * j for r, e, j in zip(rf.size, span, rf.jump)),
                          tuple(j * si for j, si in zip(rf.jump, s)),
                          tuple(st + (e / 2 - pi) * j
                                for st, e, pi, j in zip(rf.start, span, p, rf.jump)))


def _conv_padding(m: nn.modules.conv._ConvNd) -> tuple[int, ...]:
    """The padding before the first pixel (the 'same' and 'valid' strings resolved)."""
    if m.padding == "valid":
        return (0,) * len(m.kernel_size)
    if m.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(m.kernel_size, m.dilation))
    return tuple(m.padding)


def _conv_rf(m, x, y, rf):
    return _window_rf(rf, m.kernel_size, m.stride, _conv_padding(m), m.dilation)


def _pool_rf(m, x, y, rf):
    stride = m.stride if m.stride else m.kernel_size   # torch: stride None means the kernel
    return _window_rf(rf, m.kernel_size, stride, getattr(m, "padding", 0),
                      getattr(m, "dilation", 1))


def _same_pad_rf(m, x, y, rf):
    """timm's Conv2dSame / MaxPool2dSame / AvgPool2dSame (TensorFlow 'SAME'): the padding
    depends on the input size; the smaller half goes before the first pixel."""
    n = x.dim() - 2
    k, s = _per_axis(m.kernel_size, n), _per_axis(m.stride, n)
    d = _per_axis(getattr(m, "dilation", 1), n)
    pad = [max((math.ceil(i / si) - 1) * si + (ki - 1) * di + 1 - i, 0) // 2
           for i, ki, si, di in zip(x.shape[2:], k, s, d)]
    return _window_rf(rf, k, s, pad, d)


def _adaptive_pool_rf(m, x, y, rf):
    """Pooling to 1x1 is global; otherwise the window torch uses when the sizes divide
    (stride in // out, kernel in - (out - 1) * stride), the nearest when they do not."""
    n_in, n_out = x.shape[2:], y.shape[2:]
    if all(o == 1 for o in n_out) and math.prod(n_in) > 1:
        return GLOBAL
    stride = [max(1, i // o) for i, o in zip(n_in, n_out)]
    kernel = [i - (o - 1) * s for i, o, s in zip(n_in, n_out, stride)]
    return _window_rf(rf, kernel, stride, 0)


def _pad_rf(m, x, y, rf):
    """ZeroPad2d and friends: (left, right, top, bottom) shifts where unit 0 is."""
    if rf is None or rf.is_global:
        return rf
    n = len(rf.size)
    p = _per_axis(m.padding, 2 * n)
    before = [p[2 * (n - 1 - a)] for a in range(n)]     # torch lists the last axis first
    return ReceptiveField(rf.size, rf.jump,
                          tuple(st - b * j for st, b, j in zip(rf.start, before, rf.jump)))


def _global_rf(m, x, y, rf):
    return GLOBAL


# Each rule: (module, input, output, input's field) -> output's field (None: unknown).
# Layers without a rule (norms, activations, dropout) keep their input's field.
RF_RULES: dict[type, Callable] = {
    nn.modules.conv._ConvNd: _conv_rf,
    nn.modules.conv._ConvTransposeNd: lambda m, x, y, rf: None,   # spreads, not a window
    nn.modules.pooling._MaxPoolNd: _pool_rf,
    nn.modules.pooling._AvgPoolNd: _pool_rf,
    nn.modules.pooling._LPPoolNd: _pool_rf,
    nn.modules.pooling._AdaptiveAvgPoolNd: _adaptive_pool_rf,
    nn.modules.pooling._AdaptiveMaxPoolNd: _adaptive_pool_rf,
    nn.modules.padding._ConstantPadNd: _pad_rf,
    nn.modules.padding._ReflectionPadNd: _pad_rf,
    nn.modules.padding._ReplicationPadNd: _pad_rf,
    nn.Linear: _global_rf,
    nn.Bilinear: _global_rf,
}
try:  # timm's TensorFlow-style 'SAME' layers pad by the input size (EfficientNet-Lite)
    from timm.layers import AvgPool2dSame, Conv2dSame
    from timm.layers.pool2d_same import MaxPool2dSame

    RF_RULES |= {Conv2dSame: _same_pad_rf, MaxPool2dSame: _same_pad_rf, AvgPool2dSame: _same_pad_rf}
except ImportError:  # pragma: no cover - timm is a dependency; only its layout could move
    pass


def _union(fields: list[ReceptiveField]) -> ReceptiveField:
    """The field of a sum or concatenation of maps: from the leftmost to the rightmost
    pixel any of them sees."""
    if len(fields) == 1:
        return fields[0]
    lo = [min(f.start[a] - (f.size[a] - 1) / 2 for f in fields) for a in range(len(fields[0].size))]
    hi = [max(f.start[a] + (f.size[a] - 1) / 2 for f in fields) for a in range(len(fields[0].size))]
    return ReceptiveField(tuple(int(round(h - l)) + 1 for l, h in zip(lo, hi)),
                          tuple(max(f.jump[a] for f in fields) for a in range(len(lo))),
                          tuple((l + h) / 2 for l, h in zip(lo, hi)))


def _op_rf(tensors: list[torch.Tensor], out: torch.Tensor) -> ReceptiveField | None:
    """The field of a tensor operation's output from its inputs' fields (between layers:
    residual adds, concatenations, activations written as functions, reshapes)."""
    local, whole = [], False
    spatial = tuple(out.shape[2:]) if out.dim() >= 3 else None
    for t in tensors:
        rf = getattr(t, _RF_ATTR, None)
        if rf is None:
            continue
        if rf.is_global:
            whole = True
        elif spatial is not None and tuple(t.shape[2:]) == spatial:
            local.append(rf)
        elif spatial is not None and math.prod(spatial) == 1 and t.dim() >= 3 \
                and math.prod(t.shape[2:]) > 1:
            whole = True                       # a map reduced to 1x1: x.mean((2, 3), keepdim)
    if local:  # a broadcast gate (global or 1x1) scales these units; they look where they did
        return _union(local)
    return GLOBAL if whole else None

# functions that apply weights: each adds one to the depth of the tensor it makes
_WEIGHT_FUNCS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                 F.conv_transpose3d, F.linear, F.bilinear, torch.matmul, torch.mm, torch.bmm,
                 torch.addmm}
_DEPTH_ATTR = "_convlab_depth"
_RF_ATTR = "_convlab_rf"


class _DepthMode(TorchFunctionMode):
    """Follows every tensor operation; a tensor's depth is the longest chain of weight
    layers behind it, and its receptive field comes from its inputs' (_op_rf)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") == "__get__":  # attribute reads (x.shape)
            return out
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        depth = max((getattr(t, _DEPTH_ATTR, 0) for t in tensors), default=0)
        if func in _WEIGHT_FUNCS:
            depth += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
                try:
                    setattr(t, _DEPTH_ATTR, depth)
                    # layers with a rule overwrite this in their forward hook
                    setattr(t, _RF_ATTR, _op_rf(tensors, t))
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
    rf: ReceptiveField | None = None   # of the output (the last call's); None: not known

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
                calls=block.calls if block else 1, rf=block.rf if block else rows[-1].rf))
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
    fields: dict[nn.Module, ReceptiveField | None] = {}
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
        rf_rule = _lookup(RF_RULES, m)
        if rf_rule is not None and x is not None and y is not None and y is not x:
            setattr(y, _RF_ATTR, rf_rule(m, x, y, getattr(x, _RF_ATTR, None)))
        if y is not None:
            fields[m] = getattr(y, _RF_ATTR, None)

    handles = []
    for m in names:
        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(hook))
    x = torch.zeros((1, *input_shape), device=device)
    n_axes = len(input_shape) - 1
    setattr(x, _RF_ATTR, ReceptiveField((1,) * n_axes, (1,) * n_axes, (0.0,) * n_axes))
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
                                     shapes.get(m, ()), units, conn, w, b, macs, calls.get(m, 0),
                                     fields.get(m)))
        if not leaf and m is not model:
            blocks[name] = LayerStats(name, _type_name(m), "block", shapes.get(m, ()),
                                      0, 0, 0, 0, 0, calls.get(m, 0), fields.get(m))
    return ModelStats(tuple(input_shape), tuple(out.shape[1:]) if out is not None else (),
                      layers, int(depth), blocks)
