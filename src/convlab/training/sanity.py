"""The lecture's sanity checks before a long run.

overfit(): a model that works can memorise a handful of images. Train on the first n
examples (taken in turn from each class), with regularisation off and plain SGD,
until every one is classified right; if that does not happen, something is wrong.

gradcheck(): compare the analytic gradients (autograd, including any custom
backward a user wrote) against centred finite differences
(f(w + h) - f(w - h)) / 2h, in float64 on a small input.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._runtime import one_thread
from ..config import TrainConfig
from ..data import ImageSet, Preprocess
from ..errors import ConfigError, ModelError, TrainingError
from ..progress import progress
from .callbacks import Callback
from .loop import fit
from .metrics import evaluate

__all__ = ["OverfitResult", "overfit", "overfit_subset", "GradcheckResult", "TensorCheck",
           "gradcheck", "KINK_RULES"]


# ----------------------------------------------------------------------------- overfit

@dataclass
class OverfitResult:
    reached: bool               # 100% training accuracy reached
    epochs: int                 # epochs run (the epochs needed when reached)
    n: int                      # images trained on
    lr: float
    losses: list[float]         # training loss by epoch (mean over the epoch's batch)
    accuracies: list[float]     # training accuracy by epoch (eval mode, all n images)
    message: str

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def overfit_subset(data: ImageSet, n: int) -> ImageSet:
    """The first n examples taken in turn from each class (class 0's first, class 1's
    first, ..., then the seconds), so a class-sorted folder still gives every class."""
    if n < 1:
        raise ConfigError(f"the overfit check needs at least 1 image; got -n {n}")
    per_class = [torch.nonzero(data.labels == c).flatten() for c in range(data.num_classes)]
    rank = torch.empty(len(data), dtype=torch.int64)
    for idx in per_class:
        rank[idx] = torch.arange(len(idx))
    order = torch.argsort(rank * len(data) + torch.arange(len(data)))  # round-robin by class
    return data.subset(order[:min(n, len(data))].sort().values)


def _no_dropout(model: nn.Module) -> int:
    """Set every dropout layer's rate to 0 (regularisation off); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m in layers:
        m.p = 0.0
    return len(layers)


def overfit(model: nn.Module, data: ImageSet, preprocess: Preprocess, *, n: int = 20,
            lr: float = 0.05, max_epochs: int = 300, seed: int = 0,
            device: str | torch.device = "cpu", verbose: bool = True) -> OverfitResult:
    """Train `model` on `n` images of `data` with plain SGD (no momentum, no weight
    decay, dropout off), one full batch per epoch, until all n are classified right
    (measured in eval mode) or `max_epochs` pass. The model is trained in place."""
    if max_epochs < 1:
        raise ConfigError(f"--max-epochs must be at least 1; got {max_epochs}")
    if not lr > 0:
        raise ConfigError(f"learning rate must be positive; got {lr}")
    subset = overfit_subset(data, n)
    _no_dropout(model)
    config = TrainConfig(epochs=max_epochs, batch_size=len(subset), lr=lr, optimizer="sgd",
                         schedule="constant", weight_decay=0.0, val_split=0.0, seed=seed,
                         channels_last=False)
    accuracies: list[float] = []
    losses: list[float] = []
    blew_up = ""
    bar = progress(max_epochs, f"overfit {len(subset)} images", "epoch", enabled=verbose)
    try:
        with one_thread():
            fit(model, subset, None, config=config, preprocess=preprocess, device=device,
                callbacks=[_UntilAllRight(subset, preprocess, device, losses, accuracies, bar)],
                verbose=False)
    except TrainingError as exc:  # a NaN/infinite loss is an answer here, not a crash
        blew_up = str(exc).split(";")[0]
    finally:
        bar.close()
    reached = bool(accuracies) and accuracies[-1] >= 1.0
    epochs = len(losses) + bool(blew_up)
    if reached:
        message = (f"reached 100% training accuracy on {len(subset)} images after {epochs} "
                   f"epoch{'s' * (epochs != 1)} (loss {losses[0]:.3g} -> {losses[-1]:.3g}); "
                   f"the model, the loss and the gradients can learn")
    elif blew_up:
        message = (f"did NOT reach 100% training accuracy on {len(subset)} images: the {blew_up}. "
                   f"The learning rate {lr:g} is too high (try {lr / 10:g}).")
    else:
        message = (f"did NOT reach 100% training accuracy on {len(subset)} images in {epochs} "
                   f"epochs: best {max(accuracies):.0%}, loss {losses[0]:.3g} -> {losses[-1]:.3g}. "
                   + _diagnose(losses, lr))
    return OverfitResult(reached, epochs, len(subset), lr, losses, accuracies, message)


class _UntilAllRight(Callback):
    """After each epoch, classify all the images in eval mode; stop when all are right."""

    def __init__(self, data: ImageSet, preprocess: Preprocess, device, losses: list[float],
                 accuracies: list[float], bar) -> None:
        self.data, self.preprocess, self.device = data, preprocess, device
        self.losses, self.accuracies, self.bar = losses, accuracies, bar

    def on_epoch_end(self, state, stats) -> None:
        acc = evaluate(state.model, self.data, self.preprocess, device=self.device).top1
        self.losses.append(stats.loss)
        self.accuracies.append(acc)
        state.stop = acc >= 1.0
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{stats.loss:.4f}", acc=f"{acc:.2f}")


def _diagnose(losses: list[float], lr: float) -> str:
    """What a failed overfit usually means, read from the loss curve."""
    first, last, low = losses[0], losses[-1], min(losses)
    if last > first or last > 2 * low:
        return (f"The loss went up or jumps: the learning rate {lr:g} is probably too high "
                f"(try {lr / 10:g}).")
    if last > 0.9 * first:
        return (f"The loss barely fell: the learning rate {lr:g} may be too low (try {lr * 10:g}), "
                "or the model has a bug (a layer not connected to the output, the output "
                "size not matching the classes, the labels not matching the images).")
    return (f"The loss is falling but not far enough yet: train longer (--max-epochs "
            f"{2 * len(losses)}) or raise the learning rate a little (try {lr * 3:g}); deep "
            "networks without BatchNorm often sit on a plateau under plain SGD before they "
            "start to learn.")


# --------------------------------------------------------------------------- gradcheck

def _relu_pattern(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x > 0


def _hardtanh_pattern(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    lo, hi = (0.0, 6.0) if isinstance(m, nn.ReLU6) else (m.min_val, m.max_val)
    return (x > lo).to(torch.int8) + (x > hi).to(torch.int8)


def _maxpool_pattern(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F
    pool = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d,
            nn.MaxPool3d: F.max_pool3d}[next(c for c in type(m).__mro__ if c in _POOLS)]
    return pool(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                return_indices=True)[1]


def _adaptive_max_pattern(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F
    pool = {nn.AdaptiveMaxPool1d: F.adaptive_max_pool1d, nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d,
            nn.AdaptiveMaxPool3d: F.adaptive_max_pool3d}[next(c for c in type(m).__mro__
                                                             if c in _POOLS)]
    return pool(x, m.output_size, return_indices=True)[1]


_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
          nn.AdaptiveMaxPool3d)


# Layers whose derivative jumps (a kink): which side of it each input lies on. When a
# finite-difference step moves an input across a kink, that entry's numerical
# gradient is meaningless, so it is reported apart and not counted against the check.
KINK_RULES = {
    nn.ReLU: _relu_pattern, nn.LeakyReLU: _relu_pattern, nn.PReLU: _relu_pattern,
    nn.ReLU6: _hardtanh_pattern, nn.Hardtanh: _hardtanh_pattern,
    nn.MaxPool1d: _maxpool_pattern, nn.MaxPool2d: _maxpool_pattern, nn.MaxPool3d: _maxpool_pattern,
    nn.AdaptiveMaxPool1d: _adaptive_max_pattern, nn.AdaptiveMaxPool2d: _adaptive_max_pattern,
    nn.AdaptiveMaxPool3d: _adaptive_max_pattern,
}


def _kink_rule(m: nn.Module):
    for cls in type(m).__mro__:
        if cls in KINK_RULES:
            return KINK_RULES[cls]
    return None


@dataclass
class TensorCheck:
    """The check of one parameter tensor (or of the input)."""

    name: str
    shape: tuple[int, ...]
    checked: int                # entries compared
    kinks: int                  # entries whose step crossed a ReLU/max-pool kink (left out)
    rel_error: float            # |analytic - numeric| / (|analytic| + |numeric|) over the rest
    max_abs_error: float        # largest |analytic - numeric| over the rest
    worst: list[dict] = field(default_factory=list)  # index, analytic, numeric, rel_error
    passed: bool = True
    zero: bool = False          # the gradient is zero: only rounding noise was compared


@dataclass
class GradcheckResult:
    tensors: list[TensorCheck]
    threshold: float
    eps: float
    noise: float                # absolute rounding noise of a numerical gradient
    kink_layers: list[str]      # layers with kinks that gradcheck watched

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tensors)

    @property
    def max_rel_error(self) -> float:
        """The largest relative error over tensors with a non-zero gradient."""
        return max((t.rel_error for t in self.tensors if not t.zero), default=0.0)

    @property
    def kinks(self) -> int:
        return sum(t.kinks for t in self.tensors)

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return {"passed": self.passed, "max_rel_error": self.max_rel_error,
                "threshold": self.threshold, "eps": self.eps, "noise": self.noise, "kinks": self.kinks,
                "kink_layers": self.kink_layers, "tensors": [asdict(t) for t in self.tensors]}


def _run_watched(net: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[str, str]:
    """Run `net` once; ('', '') when it works, else (the innermost layer that was running
    when it failed, its first error line). Also checks that float64 stays float64."""
    names = {m: f"'{n}' ({type(m).__name__})" if n else f"the module ({type(m).__name__})"
             for n, m in net.named_modules()}
    running: list[nn.Module] = []
    bad: list[str] = []

    def pre(m, args):
        running.append(m)

    def post(m, args, out):
        running.pop()
        ins = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if ins and all(a.dtype == torch.float64 for a in ins) and not bad:
            bad.extend(f"layer {names[m]} returns {o.dtype} from float64 input" for o in outs
                       if isinstance(o, torch.Tensor) and o.is_floating_point()
                       and o.dtype != torch.float64)

    hooks = [h for m in net.modules() for h in (m.register_forward_pre_hook(pre),
                                                   m.register_forward_hook(post))]
    try:
        with torch.no_grad():
            net(*inputs)
    except Exception as exc:  # any layer's failure: name the innermost one that was running
        return names.get(running[-1] if running else net, "?"), str(exc).splitlines()[0]
    finally:
        for h in hooks:
            h.remove()
    return (bad[0], "") if bad else ("", "")


def _float64_copy(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> nn.Module:
    """A float64 copy of `module` that runs on `inputs`, or ModelError naming the layer
    that cannot (raises in float64, or hands back another dtype)."""
    net = copy.deepcopy(module).cpu()
    try:
        net = net.double()
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"gradcheck: the model cannot be converted to float64 ({exc})") from None
    where, error = _run_watched(net, inputs)
    if where and not error:
        raise ModelError(f"gradcheck needs every layer to run in float64, but {where}; "
                         f"make it keep its input's dtype")
    if where:
        # does the module fail on this input anyway, in its own precision?
        own = copy.deepcopy(module).cpu()
        dtype = next((p.dtype for p in own.parameters() if p.is_floating_point()), torch.float32)
        where_own, error_own = _run_watched(own, tuple(x.to(dtype) if x.is_floating_point()
                                                       else x for x in inputs))
        if error_own:
            raise ModelError(f"gradcheck: the module fails on this input (shape "
                             f"{tuple(inputs[0].shape)}) at layer {where_own}: {error_own}")
        raise ModelError(f"gradcheck needs every layer to run in float64, but layer {where} "
                         f"fails: {error}")
    return net


def gradcheck(module: nn.Module, input: torch.Tensor | Sequence[torch.Tensor], *,
              eps: float = 1e-6, threshold: float = 1e-6, samples: int | None = 64,
              check_input: bool = True, seed: int = 0, worst: int = 3,
              verbose: bool = False) -> GradcheckResult:
    """Check `module`'s gradients against centred finite differences, in float64.

    Works on any nn.Module (a float64 copy is checked; the module is left as it is).
    The scalar checked is sum(output * R) for a fixed random R of the output's shape,
    so every output counts. For each parameter tensor (and the input, when it is
    floating point and `check_input`), up to `samples` entries (all with None) are
    perturbed by +-eps; the relative error is |a - n| / (|a| + |n|) taken over the
    tensor's entries (norms), and the tensor passes when it is at most `threshold`.
    Entries whose step moved some ReLU/max-pool input across its kink (see KINK_RULES)
    are counted in `kinks` and left out. Dropout is made repeatable by reseeding the
    random generator before every forward pass; BatchNorm keeps the module's mode.
    """
    inputs = tuple(input) if isinstance(input, (tuple, list)) else (input,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise ConfigError("gradcheck needs an input tensor (or a tuple of tensors)")
    if eps <= 0 or threshold <= 0:
        raise ConfigError(f"gradcheck needs eps > 0 and threshold > 0; got {eps:g}, {threshold:g}")
    inputs = tuple(x.detach().cpu().double() if x.is_floating_point() else x.detach().cpu()
                   for x in inputs)
    with torch.random.fork_rng(devices=[]), one_thread():
        net = _float64_copy(module, inputs)
        return _check(net, inputs, eps, threshold, samples, check_input, seed, worst, verbose)


def _check(net: nn.Module, inputs: tuple[torch.Tensor, ...], eps: float, threshold: float,
           samples: int | None, check_input: bool, seed: int, n_worst: int,
           verbose: bool) -> GradcheckResult:
    names = {m: n for n, m in net.named_modules()}
    patterns: list[torch.Tensor] = []
    kink_layers = []
    hooks = []
    for m in net.modules():
        rule = _kink_rule(m)
        if rule is not None:
            kink_layers.append(f"{names[m] or 'the module'} ({type(m).__name__})")
            hooks.append(m.register_forward_hook(
                lambda mod, args, out, rule=rule: patterns.append(rule(mod, args[0].detach()))))
    # BatchNorm's running statistics change on every training-mode forward; keep them fixed
    buffers = [(b, b.clone()) for b in net.buffers()]

    def restore() -> None:
        for b, saved in buffers:
            b.copy_(saved)

    def forward() -> torch.Tensor:
        torch.manual_seed(seed)
        out = net(*inputs)
        return out[0] if isinstance(out, (tuple, list)) else out

    gen = torch.Generator().manual_seed(seed)
    out = forward()
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise ModelError("gradcheck: the module must return a floating-point tensor")
    weight = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    # rounding error of one centred difference: a few ulps of the summed terms, over 2 eps
    noise = 10 * torch.finfo(torch.float64).eps * max(1.0, float((out.detach() * weight).abs().sum())) / eps

    def loss() -> float:
        patterns.clear()
        with torch.no_grad():
            value = float((forward() * weight).sum())
            restore()
        return value

    targets: list[tuple[str, torch.Tensor]] = [(n, p) for n, p in net.named_parameters()
                                               if p.requires_grad]
    if check_input:
        targets += [(f"input{i}" if len(inputs) > 1 else "input", x)
                    for i, x in enumerate(inputs) if x.is_floating_point()]
    if not targets:
        raise ModelError("gradcheck: the module has no trainable parameters and no "
                         "floating-point input to check")
    for _, t in targets:
        t.requires_grad_(True)
    net.zero_grad(set_to_none=True)
    (forward() * weight).sum().backward()
    with torch.no_grad():
        restore()
    analytic = {n: (t.grad.detach().clone() if t.grad is not None else torch.zeros_like(t))
                for n, t in targets}
    picks = {}
    for n, t in targets:
        k = t.numel() if samples is None else min(samples, t.numel())
        picks[n] = (torch.randperm(t.numel(), generator=gen)[:k] if k < t.numel()
                    else torch.arange(t.numel()))
    total = sum(len(p) for p in picks.values())
    bar = progress(total, "gradcheck", "entry", enabled=verbose)
    checks = []
    with torch.no_grad():
        for n, t in targets:
            flat = t.data.view(-1)
            a_all = analytic[n].reshape(-1)
            a_list, n_list, kink_list = [], [], []
            for i in picks[n].tolist():
                old = float(flat[i])
                flat[i] = old + eps
                plus = loss()
                pat_plus = list(patterns)
                flat[i] = old - eps
                minus = loss()
                pat_minus = list(patterns)
                flat[i] = old
                a_list.append(float(a_all[i]))
                n_list.append((plus - minus) / (2 * eps))
                kink_list.append(any(not torch.equal(p, q) for p, q in zip(pat_plus, pat_minus)))
                bar.update(1)
            checks.append(_summarise(n, t, picks[n], a_list, n_list, kink_list, threshold,
                                     noise, n_worst))
    bar.close()
    for _, t in targets:
        t.requires_grad_(False)
    for h in hooks:
        h.remove()
    return GradcheckResult(checks, threshold, eps, noise, kink_layers)


def _summarise(name: str, t: torch.Tensor, idx: torch.Tensor, a_list: list[float],
               n_list: list[float], kink_list: list[bool], threshold: float, noise: float,
               n_worst: int) -> TensorCheck:
    a = torch.tensor(a_list, dtype=torch.float64)
    num = torch.tensor(n_list, dtype=torch.float64)
    kink = torch.tensor(kink_list, dtype=torch.bool)
    keep = ~kink
    diff = (a - num).abs()
    denom = float(a[keep].norm() + num[keep].norm())
    rel = float(diff[keep].norm()) / denom if denom > 0 else 0.0
    entry_rel = diff / (a.abs() + num.abs()).clamp(min=1e-12)
    order = diff.argsort(descending=True)[:n_worst]
    shape = tuple(t.shape)
    worst = [{"index": [int(v) for v in np.unravel_index(int(idx[j]), shape)] if shape else [],
              "analytic": float(a[j]), "numeric": float(num[j]),
              "rel_error": float(entry_rel[j]), "kink": bool(kink[j])}
             for j in order.tolist()]
    max_abs = float(diff[keep].max()) if bool(keep.any()) else 0.0
    # a gradient that is zero (a conv bias before BatchNorm) has only rounding noise
    # left, whose relative error means nothing: it passes when the noise is that small
    zero = max(float(a[keep].abs().max()), float(num[keep].abs().max())) <= noise \
        if bool(keep.any()) else False
    passed = math.isfinite(rel) and (rel <= threshold or max_abs <= noise)
    return TensorCheck(name, shape, len(a_list), int(kink.sum()), rel, max_abs, worst, passed,
                       zero)
