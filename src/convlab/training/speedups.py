"""Training speed-ups, as one explicit step: a twin of the user's module that trains
faster and computes what the module computes.

fit (and lr-find, which trains through fit) runs its forward and backward passes
through `training_twin(model)`; callbacks, the optimizer, checkpoints and evaluation see
the user's module. The twin is
a torch.fx trace of the module (a GraphModule) that calls the user's own layers, so it
holds the user's Parameter and buffer objects: an optimizer step, a BatchNorm running
statistic, a callback's in-place change or a checkpoint load acts on both. The
rewrites are made on the twin's graph; the user's module keeps its submodules, their
order, its forward methods and its hooks. The one change made to the user's module is
its memory format (channels_last), a layout the twin shares because it shares the
tensors; the values stay the same.

Exactness contract, per speed-up (`twin(x)` against `model(x)`, same weights, same
random state, same memory format):

- ReLU after max pool. An nn.ReLU whose output only feeds an nn.MaxPool2d runs after
  the pool instead, on a quarter of the values. Bit-identical outputs and gradients:
  ReLU is monotone, so relu(max S) = max relu(S) for every window S; the pool's gradient
  goes to the window's first maximum in both orders, and ReLU's gradient is zero in
  both exactly where that maximum is <= 0. An in-place ReLU is moved only when its input
  is the fresh output of a convolution, linear or BatchNorm layer that nothing else
  reads, so nothing else sees the values it would have changed.
- Pooling gradients in channels_last. The gradient that enters a pooling layer (and a
  ReLU right after one) comes back from the flatten in NCHW order; it is made
  channels_last there, so that the pooling, ReLU and BatchNorm backward passes get one
  layout instead of copying whole activations to reconcile two. Same gradient values;
  later reductions (BatchNorm and convolution weight gradients) may sum in another
  order in this layout, so they agree to float rounding, not always bit for bit.
- Fused BatchNorm -> ReLU -> MaxPool2d(2) (convlab.kernels, when built). One kernel does
  the three layers' work: float32 results at least as close to a float64 reference as
  the three ATen layers, bfloat16 ones within bfloat16 rounding of them, running
  statistics updated as BatchNorm updates them (tests/test_kernels.py holds it to
  that). It runs for a BatchNorm2d in training mode on a channels_last CPU tensor of
  even height and width; anything else (eval mode, odd sizes, other devices) runs the
  three layers themselves, ReLU after the pool (exact, as above). Not with sync-bn,
  whose BatchNorms take the statistics over all ranks.
- channels_last memory format of the parameters (and the batches, which the caller
  makes). Same values; convolutions may choose other algorithms for this layout, so
  results agree to float rounding.
- sync-bn (`sync_bn=device`): the twin's trainable BatchNorms become GlobalBatchNorm
  layers holding the user's Parameter and buffer tensors, with statistics over the
  global batch, which is what sync-bn asks for; the user's module keeps its BatchNorms
  (hooks on those do not fire in training, as when sync-bn replaced them in the module).
  A module fx cannot trace gets the replacement itself, undone when training ends.
- bfloat16 autocast (`uses_bf16`) is not a rewrite: it is the precision the config asks
  for, and changes the numbers by bfloat16 rounding.

The twin follows the module while it trains: it watches the modules whose code it has
inlined (the root, the containers it traced through, the layers it rewrote) for a
change of mode, hooks, forward method, children, parameters or buffers, and traces
afresh before the next step when one changed, so a hook a callback adds during fit
fires as it would on the module itself. A module that fx cannot trace, or whose root
has hooks or its own forward, or any model while global module hooks are set, runs as
it is: then the only speed-up is the memory format.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import fx, nn
from torch.nn.modules import module as _module_hooks
from torch.nn.modules.utils import _pair

from .. import kernels
from .._runtime import cpu_has_bf16
from ..errors import ConfigError

__all__ = ["training_twin", "TrainingTwin", "FusedBNReLUPool", "uses_channels_last", "uses_bf16"]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")
# layers whose output is a new tensor: an in-place ReLU on it changes nothing else
_FRESH = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


def uses_channels_last(model: nn.Module) -> bool:
    """Whether channels_last pays off: for models with 2-D convolutions."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs its forward pass under bfloat16 autocast.

    'auto' means bf16 on a CUDA device that supports it and float32 on the CPU; 'bf16'
    asks for it on the CPU too, where it needs native bfloat16 instructions (AVX512-BF16
    or AMX): there it halves the memory traffic of the activations. Weights, optimizer
    state and the loss stay float32.
    """
    if precision == "fp32":
        return False
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no "
                              f"bfloat16 support; use --precision fp32")
        return torch.cuda.is_bf16_supported()
    if precision == "auto":
        return False
    if device.type != "cpu" or not cpu_has_bf16():
        raise ConfigError(f"--precision bf16 needs a CUDA GPU or a CPU with native bfloat16 "
                          f"(AVX512-BF16 or AMX); this {device.type} has neither, and emulated "
                          f"bf16 is slower than float32: use --precision fp32 or auto")
    return True


@contextlib.contextmanager
def training_twin(model: nn.Module, *, channels_last: bool = True, fuse: bool = True,
                  sync_bn: torch.device | None = None) -> Iterator[tuple[nn.Module, bool]]:
    """The module to train `model` through, and whether it runs channels_last.

    Yields `(twin, channels_last)`: run forward and backward through `twin`, and make the
    batches channels_last when the flag is True (`channels_last` asked for it and the
    model has 2-D convolutions). `fuse` allows the fused BatchNorm -> ReLU -> pool kernel
    (it needs channels_last); `sync_bn`, a device, makes the twin's BatchNorms share
    their statistics across the ranks of a distributed run (and turns fusing off).
    `twin` is a TrainingTwin sharing the module's parameters and buffers, or `model`
    itself when no rewrite applies. The exactness contract is in this module's docstring.
    """
    on = channels_last and uses_channels_last(model)
    if on:  # the user's parameters, in place: the twin holds the same tensors
        model.to(memory_format=torch.channels_last)
    twin = TrainingTwin(model, channels_last=on, fuse=fuse and on and sync_bn is None,
                        sync_bn=sync_bn)
    try:
        yield (twin if twin.rewritten else model), on
    finally:
        twin.release()


class TrainingTwin(nn.Module):
    """`model` traced by torch.fx and rewritten for speed, sharing its layers (see the
    module docstring). Calls `model` itself while the graph cannot follow it.

    `rewritten` names the rewrites made, e.g. ['fused BatchNorm2d -> ReLU -> MaxPool2d
    at network1.1', ...]. train()/eval() set the user's module's mode."""

    def __init__(self, model: nn.Module, *, channels_last: bool = True, fuse: bool = True,
                 sync_bn: torch.device | None = None) -> None:
        super().__init__()
        self.model = model  # a child, so parameters() (and DDP) find the parameters
        self.traced: fx.GraphModule | None = None
        self.rewritten: list[str] = []
        self._options = (channels_last, fuse, sync_bn)
        self._watched: list[tuple[nn.Module, bool, tuple]] = []
        self._synced: list[tuple[nn.Module, nn.Module]] = []  # (twin's BatchNorm, user's)
        self._replaced: list[tuple[nn.Module, str, nn.Module]] = []  # see release()
        self.training = model.training
        self._build()

    def train(self, mode: bool = True) -> TrainingTwin:
        self.training = mode
        self.model.train(mode)  # the user's module decides its own modes (its train() override)
        return self

    def forward(self, *args, **kwargs):
        if any(getattr(_module_hooks, h, None) for h in _GLOBAL_HOOKS):
            # they fire for every module call, also of the containers the graph inlines
            return self.model(*args, **kwargs)
        if any(_watch_state(m, inlined) != state for m, inlined, state in self._watched):
            self._build()
        for mine, theirs in self._synced:
            mine.training = theirs.training
        return (self.traced if self.traced is not None else self.model)(*args, **kwargs)

    def release(self) -> None:
        """Give back the BatchNorms that sync-bn had to replace in a user module that fx
        cannot trace (the one case where the module itself is changed, during fit)."""
        for parent, name, child in reversed(self._replaced):
            parent._modules[name] = child
        self._replaced = []

    def _build(self) -> None:
        channels_last, fuse, sync_bn = self._options
        self.traced, self.rewritten, self._watched, self._synced = None, [], [], []
        if not any(isinstance(m, (*_POOLS, nn.modules.batchnorm._BatchNorm))
                   for m in self.model.modules()):
            return  # every rewrite starts at a pool or a BatchNorm: nothing to trace for
        traced = _trace(self.model)
        synced: list[tuple[str, nn.Module, nn.Module]] | None = []
        if traced is not None and sync_bn is not None:
            synced = _sync_batchnorms(traced[0], sync_bn)
        if traced is None or synced is None:
            # the root's hooks or forward may be why: trace again once they are gone
            self._watched = [(self.model, False, _watch_state(self.model, False))]
            if sync_bn is not None and not self._replaced:
                self._replaced = _sync_batchnorms_in_place(self.model, sync_bn)
                self.rewritten = ["sync-bn in the module itself (the twin cannot follow it)"]
            return
        gm, inlined, kept = traced
        changed: list[nn.Module] = [*kept]  # a hook's removal lets the graph rewrite them
        rewritten = [f"sync-bn at {name}" for name, _, _ in synced]
        self._synced = [(mine, theirs) for _, mine, theirs in synced]
        if fuse and kernels.available():
            rewritten += _fuse_bn_relu_pool(gm, changed)
        rewritten += _relu_after_max_pool(gm, changed)
        if channels_last:
            rewritten += _pool_grads_channels_last(gm)
        gm.graph.lint()
        gm.recompile()
        self._watched = ([(m, True, _watch_state(m, True)) for m in inlined]
                         + [(m, False, _watch_state(m, False)) for m in changed])
        if rewritten:
            self.traced, self.rewritten = gm, rewritten


class FusedBNReLUPool(nn.Module):
    """The user's BatchNorm2d -> ReLU -> MaxPool2d(2) as one call in the twin: the fused
    kernel where it applies, else the three layers, ReLU after the pool (exact)."""

    def __init__(self, bn: nn.BatchNorm2d, relu: nn.ReLU, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.bn, self.relu, self.pool = bn, relu, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.fusable(x, self.bn):
            return kernels.bn_relu_pool2(x, self.bn)
        y = self.relu(self.pool(self.bn(x)))
        return _grad_channels_last(y) if x.is_contiguous(memory_format=torch.channels_last) else y


# ------------------------------------------------------------------ tracing


def _hooked(m: nn.Module) -> bool:
    return any(getattr(m, h, None) for h in _HOOKS)


def _watch_state(m: nn.Module, inlined: bool) -> tuple:
    """What the twin's graph assumed of `m`: for a module whose code it inlined, its
    mode, children, parameters and buffers too; for a rewritten layer, hooks and forward."""
    base = (_hooked(m), vars(m).get("forward"))
    if not inlined:
        return base
    return base + (m.training, tuple(map(id, m._modules.values())),
                   tuple(map(id, m._parameters.values())), tuple(map(id, m._buffers.values())))


class _Tracer(fx.Tracer):
    """fx's tracer, keeping as calls (not inlined) every torch.nn layer, every BatchNorm
    (their code reads the mode) and any module with hooks or a forward of its own, so
    those run themselves, hooks included; records the modules it inlines and those it
    kept as calls for their hooks or forward.

    While it traces, fx routes every nn.Module call and attribute read in the process
    through the tracer (it patches nn.Module itself); calls from other threads (the
    teach server's previews while a job trains, say) are passed through untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.inlined: list[nn.Module] = []
        self.kept: list[nn.Module] = []
        self._thread = threading.get_ident()

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (super().is_leaf_module(m, qualname) or _hooked(m) or "forward" in vars(m)
                or isinstance(m, nn.modules.batchnorm._BatchNorm))

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)  # nn.Module.__call__ as it was
        if not self.is_leaf_module(m, self.path_of_module(m)):
            self.inlined.append(m)
        elif _hooked(m) or "forward" in vars(m):
            self.kept.append(m)
        return super().call_module(m, forward, args, kwargs)


def _attributes(model: nn.Module) -> list[tuple[nn.Module, list[dict]]]:
    return [(m, [dict(d) for d in (vars(m), m._modules, m._parameters, m._buffers)])
            for m in model.modules()]


def _trace(model: nn.Module
           ) -> tuple[fx.GraphModule, list[nn.Module], list[nn.Module]] | None:
    """(graph module calling `model`'s layers, the modules whose code it inlined, those
    called for their hooks or forward), or None when no graph can stand for `model`."""
    if _hooked(model) or "forward" in vars(model):
        return None  # the root's own hooks and forward would not run in the graph
    saved = _attributes(model)
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception:  # noqa: BLE001 - any failure of the user's code under tracing: run it as it is
        graph = None
    # a forward that assigns attributes would have left proxies in the module: put back
    # what was there, and keep no graph that would not repeat those assignments
    touched = False
    for m, dicts in saved:
        for before, now in zip(dicts, (vars(m), m._modules, m._parameters, m._buffers)):
            if before.keys() != now.keys() or any(now[k] is not v for k, v in before.items()):
                touched = True
                now.clear()
                now.update(before)
    if graph is None or touched:
        return None
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    inlined = [model, *tracer.inlined]
    # a module whose parameter or buffer the graph reads directly (get_attr) is watched too
    for node in graph.nodes:
        if node.op == "get_attr":
            owner = model.get_submodule(node.target.rpartition(".")[0])
            if all(owner is not m for m in inlined):
                inlined.append(owner)
    return gm, inlined, tracer.kept


# ------------------------------------------------------------------ graph rewrites


def _sync_batchnorms(gm: fx.GraphModule, device: torch.device
                     ) -> list[tuple[str, nn.Module, nn.Module]] | None:
    """Put a synchronised BatchNorm (sharing the user's parameters and buffers) where the
    graph calls a trainable BatchNorm; [(path, new, user's)]. None when the graph calls
    a layer that holds BatchNorms inside (one with hooks, say): the twin cannot reach them."""
    from .distributed import sync_batchnorm

    done: dict[str, tuple[nn.Module, nn.Module]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in done:
            continue
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            new = sync_batchnorm(m, device)
            if new is not m:
                gm.add_submodule(node.target, new)  # into the twin's copy of the container
                done[node.target] = (new, m)
        elif any(isinstance(s, nn.modules.batchnorm._BatchNorm) for s in m.modules()):
            return None
    return [(name, new, old) for name, (new, old) in done.items()]


def _sync_batchnorms_in_place(model: nn.Module, device: torch.device
                              ) -> list[tuple[nn.Module, str, nn.Module]]:
    """sync_batchnorm on the user's module; [(parent, name, original child)] to restore."""
    from .distributed import sync_batchnorm

    before = [(m, name, child) for m in model.modules() for name, child in m._modules.items()]
    sync_batchnorm(model, device)
    return [(m, name, child) for m, name, child in before if m._modules.get(name) is not child]


def _layer(gm: fx.GraphModule, node: fx.Node, cls: type) -> nn.Module | None:
    """The module `node` calls when it is exactly a `cls` called on one tensor, with no
    hooks and no forward of its own (its call can be replaced); else None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    m = gm.get_submodule(node.target)
    return m if type(m) is cls and not _hooked(m) and "forward" not in vars(m) else None


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_max_pool_2x2(m: nn.Module) -> bool:
    return (type(m) is nn.MaxPool2d and _pair(m.kernel_size) == _pair(m.stride) == (2, 2)
            and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1) and not m.ceil_mode
            and not m.return_indices)


def _fuse_bn_relu_pool(gm: fx.GraphModule, changed: list[nn.Module]) -> list[str]:
    """Each BatchNorm2d -> ReLU -> MaxPool2d(2) chain (nothing else reading the
    intermediate results) becomes one call of a FusedBNReLUPool holding the three layers."""
    done = []
    for node in list(gm.graph.nodes):
        bn = _layer(gm, node, nn.BatchNorm2d)
        relu_node = _only_user(node) if bn is not None else None
        relu = _layer(gm, relu_node, nn.ReLU) if relu_node is not None else None
        pool_node = _only_user(relu_node) if relu is not None else None
        pool = _layer(gm, pool_node, nn.MaxPool2d) if pool_node is not None else None
        if pool is None or not _is_max_pool_2x2(pool):
            continue
        name = f"fused_bn_relu_pool{len(done)}"
        gm.add_submodule(name, FusedBNReLUPool(bn, relu, pool))
        with gm.graph.inserting_after(pool_node):
            fused = gm.graph.call_module(name, node.args)
        pool_node.replace_all_uses_with(fused)
        for n in (pool_node, relu_node, node):
            gm.graph.erase_node(n)
        changed += [bn, relu, pool]
        done.append(f"fused BatchNorm2d -> ReLU -> MaxPool2d at {node.target}")
    return done


def _relu_after_max_pool(gm: fx.GraphModule, changed: list[nn.Module]) -> list[str]:
    """Each ReLU whose output only feeds a max pool runs after the pool instead."""
    done = []
    for node in list(gm.graph.nodes):
        relu = _layer(gm, node, nn.ReLU)
        pool_node = _only_user(node) if relu is not None else None
        pool = _layer(gm, pool_node, nn.MaxPool2d) if pool_node is not None else None
        if pool is None or pool.return_indices or not isinstance(node.args[0], fx.Node):
            continue
        x = node.args[0]
        if relu.inplace and not (len(x.users) == 1 and x.op == "call_module"
                                 and isinstance(gm.get_submodule(x.target), _FRESH)):
            continue
        pool_users = list(pool_node.users)
        pool_node.args = (x,)
        pool_node.append(node)  # the ReLU now comes right after the pool
        node.args = (pool_node,)
        for user in pool_users:
            user.replace_input_with(pool_node, node)
        changed += [relu, pool]
        done.append(f"ReLU after MaxPool2d at {node.target}")
    return done


def _channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


def _grad_channels_last(y):
    """`y` itself; its gradient is made channels_last on the way back."""
    if isinstance(y, torch.Tensor) and y.requires_grad and y.dim() == 4:
        y.register_hook(_channels_last)
    return y


def _pool_grads_channels_last(gm: fx.GraphModule) -> list[str]:
    """The output of every pooling layer, and of a ReLU that reads one, passes through
    _grad_channels_last. A tensor hook, not a module hook: the user's modules stay
    unhooked, and in-place changes to the output after pooling stay allowed."""
    def pooling(n) -> bool:
        return (isinstance(n, fx.Node) and n.op == "call_module"
                and isinstance(gm.get_submodule(n.target), _POOLS))

    marked = [n for n in gm.graph.nodes if pooling(n) or (
        n.op == "call_module" and type(gm.get_submodule(n.target)) is nn.ReLU and n.args
        and pooling(n.args[0]))]
    for n in marked:
        with gm.graph.inserting_after(n):
            hook = gm.graph.call_function(_grad_channels_last, (n,))
        n.replace_all_uses_with(hook, delete_user_cb=lambda user, hook=hook: user is not hook)
    return [f"channels_last gradient at {n.target}" for n in marked]
