"""fit(): the lecture's loop (model, batches, loss criterion, optimizer) with the care
a real run needs: progress, per-epoch checkpoints, exact resume, NaN and Ctrl-C handling.

The loop announces a few named events to callbacks (on_fit_start, on_epoch_start,
on_batch_end, on_epoch_end, on_fit_end), which is where schedules, early stopping
and other training-craft features plug in.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .. import kernels
from .._runtime import cpu_has_bf16, tune_malloc
from ..checkpoint import MODEL_FILE, library_versions, load_train_state, read_meta, save_run
from ..config import TrainConfig
from ..data import Batches, ImageSet, Preprocess
from ..errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from ..progress import progress
from ..tasks import CLASSIFICATION, Task
from .callbacks import Callback, EpochStats, FitResult, TrainState
from .distributed import (all_reduce_sum, broadcast_buffers, main_first, peer_lost,
                          same_everywhere, sync_batchnorm, world)
from .metrics import evaluate
from .optim import make_optimizer

__all__ = ["fit",
           "uses_channels_last", "channels_last_training", "relu_after_max_pool",
           "fused_bn_relu_pool", "training_layout"]


def uses_channels_last(model: nn.Module) -> bool:
    """channels_last pays off for models with 2-D convolutions (1.3-1.9x here)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


def _pool_grad_channels_last(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    # a hook on the output tensor, not a module backward hook: those refuse in-place
    # changes to the module's output, which some models make after pooling
    if isinstance(output, torch.Tensor) and output.requires_grad and output.dim() == 4:
        output.register_hook(_channels_last)


def _pools_and_their_relus(model: nn.Module) -> Iterator[nn.Module]:
    """The pooling layers, and a ReLU that directly follows one in an nn.Sequential (as
    relu_after_max_pool arranges): the last 4-D layers before a flatten, usually."""
    for m in model.modules():
        if isinstance(m, _POOLS):
            yield m
        elif isinstance(m, nn.Sequential):
            yield from (b for a, b in zip(m, m[1:]) if isinstance(a, _POOLS) and type(b) is nn.ReLU)


@contextlib.contextmanager
def channels_last_training(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Train `model` in channels_last memory format (when `enabled` and it has 2-D
    convolutions); yields whether it does.

    A pooling layer is usually followed by a flatten, whose gradient comes back in the
    default (NCHW) layout; the pooling backward then hands mixed layouts to ReLU and
    BatchNorm backward, which copy whole activations to reconcile them. Turning that
    gradient into channels_last as it enters the pooling layer (2.5 MB for mnist_cnn
    instead of two 10 MB copies) made a training step 20% faster here. A ReLU right
    after the pool gets the same hook: ReLU backward with a channels_last output and an
    NCHW gradient took 0.76 ms of a 7 ms bf16 step, against 0.07 ms with both alike.
    The hooks are removed on exit, so the model leaves as it came, apart from its layout.
    """
    on = enabled and uses_channels_last(model)
    handles = []
    if on:
        model.to(memory_format=torch.channels_last)
        handles = [m.register_forward_hook(_pool_grad_channels_last)
                   for m in _pools_and_their_relus(model)]
    try:
        yield on
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def relu_after_max_pool(model: nn.Module) -> Iterator[int]:
    """Run every ReLU that a max pool directly follows (in an nn.Sequential) after the
    pool instead; yields how many pairs were swapped, and swaps them back on exit.

    ReLU and max commute exactly: max(relu(a), relu(b)) = relu(max(a, b)), and the
    gradient reaches the same input (the window's first maximum, when it is positive;
    none otherwise), so training is bit-identical. The ReLU then works on a quarter of
    the values, forward and backward: mnist_cnn's float32 step went from 12.8 to 11.3 ms
    here (in bf16 no gain was measurable). Callbacks see the swapped order during fit.
    Parameters and buffers are untouched, so checkpoints are the same either way.
    """
    swapped = []
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        i = 0
        while i < len(seq) - 1:
            a, b = seq[i], seq[i + 1]
            if type(a) is nn.ReLU and type(b) is nn.MaxPool2d and not b.return_indices:
                seq[i], seq[i + 1] = b, a
                swapped.append((seq, i))
                i += 2  # the moved ReLU stays right after this pool
            else:
                i += 1
    try:
        yield len(swapped)
    finally:
        for seq, i in reversed(swapped):
            seq[i], seq[i + 1] = seq[i + 1], seq[i]


def _is_max_pool_2x2(m: nn.Module) -> bool:
    return (type(m) is nn.MaxPool2d and _pair(m.kernel_size) == _pair(m.stride) == (2, 2)
            and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1) and not m.ceil_mode
            and not m.return_indices)


def _fused_forward(bn: nn.BatchNorm2d, relu: nn.ReLU, pool: nn.MaxPool2d,
                   x: torch.Tensor) -> torch.Tensor:
    if kernels.fusable(x, bn):
        return kernels.bn_relu_pool2(x, bn)
    # eval mode, odd sizes, other layouts: the layers themselves, the ReLU after the pool
    # as relu_after_max_pool runs it (exact), its gradient made channels_last as there
    y = relu(pool(nn.BatchNorm2d.forward(bn, x)))
    if y.requires_grad and x.is_contiguous(memory_format=torch.channels_last):
        y.register_hook(_channels_last)
    return y


@contextlib.contextmanager
def fused_bn_relu_pool(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Run each BatchNorm2d -> ReLU -> MaxPool2d(2) in an nn.Sequential as one fused
    kernel in training (convlab.kernels, when it is built); yields how many blocks.

    The BatchNorm module stays where it is and does the three layers' work; the ReLU
    and pool slots hold nn.Identity meanwhile, so parameter and buffer names (and
    checkpoints) are unchanged. In eval mode, or for an input the kernel does not take,
    the BatchNorm runs the three layers as they are. Restored on exit. One epoch of
    mnist_cnn (bench/train_speed.py) went from 4.7 to 2.8 s in bf16 and from 6.2 to
    4.2 s in float32 here.
    """
    fused = []
    if enabled and kernels.available():
        for seq in model.modules():
            if not isinstance(seq, nn.Sequential):
                continue
            for i in range(len(seq) - 2):
                bn, relu, pool = seq[i], seq[i + 1], seq[i + 2]
                if (type(bn) is nn.BatchNorm2d and type(relu) is nn.ReLU and _is_max_pool_2x2(pool)
                        and not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                    for m in (bn, relu, pool))):
                    seq[i + 1], seq[i + 2] = nn.Identity(), nn.Identity()
                    bn.forward = functools.partial(_fused_forward, bn, relu, pool)
                    fused.append((seq, i, relu, pool))
    try:
        yield len(fused)
    finally:
        for seq, i, relu, pool in reversed(fused):
            seq[i + 1], seq[i + 2] = relu, pool
            del seq[i].forward


@contextlib.contextmanager
def training_layout(model: nn.Module, channels_last: bool = True,
                    fuse: bool = True) -> Iterator[bool]:
    """What every training loop here (fit, lr-find) does to a model for speed, undone on
    exit: fused_bn_relu_pool (with `fuse` and channels_last; not for a model whose
    BatchNorms are to become SyncBatchNorm), relu_after_max_pool, then
    channels_last_training. Yields whether the model runs channels_last (the batches
    must then be made channels_last too)."""
    with fused_bn_relu_pool(model, fuse and channels_last and uses_channels_last(model)), \
            relu_after_max_pool(model), channels_last_training(model, channels_last) as on:
        yield on


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs its forward pass under bfloat16 autocast.

    'auto' means bf16 on a CUDA device that supports it and float32 on the CPU; 'bf16'
    asks for it on the CPU too, where it needs native bfloat16 instructions (AVX512-BF16
    or AMX): there it halves the memory traffic of the activations (mnist_cnn's step
    went from 10.9 to 7.4 ms here). Weights, optimizer state and the loss stay float32.
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


def _emit(callbacks: Sequence[Callback], event: str, *args) -> None:
    for cb in callbacks:
        getattr(cb, event)(*args)


def fit(model: nn.Module, train: ImageSet, val: ImageSet | None = None, *,
        config: TrainConfig, preprocess: Preprocess, run_dir: str | Path | None = None,
        meta: dict | None = None, resume: bool = False, callbacks: Sequence[Callback] = (),
        device: str | torch.device = "cpu", augment: Callable | None = None,
        param_groups: list[dict] | None = None, task: Task = CLASSIFICATION,
        verbose: bool = True, log: Callable[[str], None] = print) -> FitResult:
    """Train `model` on `train`, validating on `val` after each epoch.

    The task (classification unless given) supplies the loss and the metrics; the
    data's targets are checked against it before the first step.

    With `run_dir`, every epoch is saved atomically (weights, meta.json with `meta`
    merged in, optimizer and RNG state), and `resume=True` continues from the last
    saved epoch to the same result as an uninterrupted run. Ctrl-C raises
    TrainingInterrupted after keeping the last complete epoch; a NaN or infinite loss
    raises TrainingError naming the epoch and batch.
    """
    tune_malloc()  # training's own process setting (DESIGN.md); importing convlab leaves malloc alone
    rank, size = world()
    device = torch.device(device)
    run_dir = Path(run_dir) if run_dir is not None else None
    torch.manual_seed(config.seed)
    model.to(device)
    sync_bn = size > 1 and getattr(config, "sync_bn", False)  # _fit replaces the BatchNorms
    with training_layout(model, config.channels_last, fuse=not sync_bn) as channels_last:
        return _fit(model, train, val, config=config, preprocess=preprocess, run_dir=run_dir,
                    meta=meta, resume=resume, callbacks=callbacks, device=device,
                    augment=augment, param_groups=param_groups, task=task, verbose=verbose, log=log,
                    channels_last=channels_last, rank=rank, size=size, sync_bn=sync_bn)


def _fit(model, train, val, *, config, preprocess, run_dir, meta, resume, callbacks, device,
         augment, param_groups, task, verbose, log, channels_last, rank, size,
         sync_bn) -> FitResult:
    from torch.nn.parallel import DistributedDataParallel

    main = rank == 0
    if sync_bn:
        model = sync_batchnorm(model, device)  # same Parameter objects, synchronised statistics
    amp = uses_bf16(config.precision, device)
    optimizer = make_optimizer(param_groups if param_groups is not None else
                               [p for p in model.parameters() if p.requires_grad], config)
    task.check_targets(train.labels, train.num_classes, train.name)
    loss_fn = task.loss(config)
    # the craft the config asks for (schedule, regularisers, init, augmentation), checked here
    from ..data.augment import make_augment
    from .regularize import craft_callbacks
    callbacks = [*craft_callbacks(config), *callbacks]
    if augment is None:
        augment = make_augment(config.augment, preprocess.size)
    state = TrainState(model, optimizer, config)
    start_epoch = 0
    if resume and run_dir is not None:
        with main_first():  # rank 0 finishes an interrupted save before the others read
            if (run_dir / "meta.json").exists():
                start_epoch = _restore(run_dir, model, optimizer, callbacks, state)
    lo, hi = same_everywhere(start_epoch) if resume else (start_epoch, start_epoch)
    if lo != hi:
        raise CheckpointError(f"--resume: the processes found different checkpoints in {run_dir} "
                              f"(epochs {lo} to {hi}); on several machines the run directory "
                              f"must be on a file system they all share")
    net = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if size > 1 else model)
    batches = Batches(train, config.batch_size, preprocess, shuffle=True, seed=config.seed,
                      device=device, augment=augment, rank=rank, world_size=size,
                      channels_last=channels_last)
    state.steps_per_epoch = len(batches)
    state.step = start_epoch * len(batches)
    base_meta = dict(meta or {})
    base_meta.setdefault("train", config.to_dict())
    base_meta.setdefault("preprocess", preprocess.to_dict())
    base_meta.setdefault("classes", list(train.classes))
    base_meta["versions"] = library_versions()
    _emit(callbacks, "on_fit_start", state)
    saved = start_epoch  # the last epoch in run_dir
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            state.epoch = epoch
            t0 = time.perf_counter()
            net.train()
            batches.set_epoch(epoch)
            _emit(callbacks, "on_epoch_start", state)
            loss_sum = torch.zeros((), dtype=torch.float64)
            counts = 0  # the sum of the task's training counts (a tensor after one batch)
            seen = 0
            bar = progress(len(batches), f"Epoch {epoch}/{config.epochs}", "batch",
                           enabled=verbose and main)
            for b, (x, y) in enumerate(batches):
                state.batch = b
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = net(x)
                    # a rank's share of a short last batch can be empty
                    loss = loss_fn(logits, y) if len(y) else logits.sum() * 0.0
                value = float(loss.detach())
                if not math.isfinite(value):
                    bar.close()
                    raise TrainingError(
                        f"loss became {value} at epoch {epoch}, batch {b + 1}; try a lower "
                        f"learning rate (now {optimizer.param_groups[0]['lr']:g})"
                        + (f"; {run_dir} still holds epoch {epoch - 1}" if run_dir and epoch > 1 else ""))
                optimizer.zero_grad(set_to_none=True)
                if size > 1:
                    # DDP averages gradients over ranks with equal weight; weighting each
                    # rank's mean loss by its share of this global batch makes the update
                    # one process's, also when the batch does not split evenly.
                    global_n = min(config.batch_size, len(train) - b * config.batch_size)
                    (loss * (len(y) * size / global_n)).backward()
                else:
                    loss.backward()
                optimizer.step()
                state.step += 1
                state.loss = loss.detach()
                loss_sum += value * len(y)
                counts = counts + task.train_counts(logits, y)
                seen += len(y)
                _emit(callbacks, "on_batch_end", state)
                bar.update(1)
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}",
                                    **{k: f"{v:.4f}" for k, v in task.train_metrics(counts, seen).items()})
            bar.close()
            broadcast_buffers(model)  # every rank evaluates (and rank 0 saves) one set of BN stats
            totals = all_reduce_sum(torch.cat([loss_sum.view(1),
                                               torch.tensor([float(seen)], dtype=torch.float64),
                                               counts]))
            train_metrics = task.train_metrics(totals[2:], int(totals[1]))
            val_loss = val_acc = None
            if val is not None and len(val):
                r = evaluate(model, val, preprocess, device=device, channels_last=channels_last,
                             loss_fn=loss_fn, task=task)
                val_loss, val_acc = r.loss, r.top1
            stats = EpochStats(epoch, float(totals[0] / totals[1]), train_metrics["acc"],
                               val_loss, val_acc, float(optimizer.param_groups[0]["lr"]),
                               time.perf_counter() - t0)
            state.history.append(stats)
            _emit(callbacks, "on_epoch_end", state, stats)
            stats.seconds = time.perf_counter() - t0
            if main:
                if verbose:
                    log(stats.line(config.epochs))
                if run_dir is not None:
                    _save(run_dir, model, optimizer, callbacks, state, base_meta,
                          done=epoch == config.epochs or state.stop)
            saved = epoch  # not reached when the save itself is interrupted
            if state.stop:
                break
    except KeyboardInterrupt:
        where = f"; {run_dir} holds epoch {saved} - continue with --resume" if run_dir and saved else ""
        raise TrainingInterrupted(f"interrupted during epoch {state.epoch}{where}") from None
    except RuntimeError as exc:
        if not peer_lost(exc):
            raise
        where = f"; {run_dir} holds epoch {saved} - continue with --resume" if run_dir and saved else ""
        raise TrainingError(f"process {rank} stopped during epoch {state.epoch}: another process "
                            f"of the run went away ({str(exc).splitlines()[0][:160]}){where}") from None
    _emit(callbacks, "on_fit_end", state)
    if main and run_dir is not None:  # callbacks may have changed the weights (best epoch)
        _save(run_dir, model, optimizer, callbacks, state, base_meta, done=True)
    return FitResult(state.history, len(state.history), stopped_early=state.stop)


def _save(run_dir: Path, model, optimizer, callbacks, state: TrainState, meta: dict,
          done: bool) -> None:
    meta = {**meta, "metrics": [asdict(s) for s in state.history],
            "state": {"epoch": state.epoch, "step": state.step, "complete": done}}
    train_state = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                   "callbacks": [cb.state_dict() for cb in callbacks]}
    save_run(run_dir, model, meta, train_state)


def _restore(run_dir: Path, model, optimizer, callbacks, state: TrainState) -> int:
    """Load weights, optimizer, RNG and callback state; return the epoch to continue after."""
    from safetensors.torch import load_model

    meta = read_meta(run_dir)
    saved = load_train_state(run_dir)
    if saved is None:
        raise CheckpointError(f"{run_dir}: no training state to resume from")
    try:
        load_model(model, str(run_dir / MODEL_FILE), strict=True)
        optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{run_dir}: checkpoint does not fit this model/optimizer ({exc})") from None
    torch.set_rng_state(saved["rng"])
    for cb, cb_state in zip(callbacks, saved.get("callbacks", [])):
        cb.load_state_dict(cb_state)
    state.history = [EpochStats(**m) for m in meta.get("metrics", [])]
    return int(meta["state"]["epoch"])
