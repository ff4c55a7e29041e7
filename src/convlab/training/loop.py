"""fit(): the lecture's loop (model, batches, loss criterion, optimizer) with the care
a real run needs: progress, per-epoch checkpoints, exact resume, NaN and Ctrl-C handling.

The loop announces a few named events to callbacks (on_fit_start, on_epoch_start,
on_batch_start, on_batch_end, on_epoch_end, on_fit_end), which is where schedules,
early stopping, the lr range test and other training-craft features plug in.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .._runtime import tune_malloc
from ..checkpoint import MODEL_FILE, library_versions, load_train_state, read_meta, save_run
from ..config import TrainConfig
from ..data import Batches, FeatureSet, ImageSet, Preprocess
from ..errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from ..progress import progress
from ..tasks import CLASSIFICATION, Task
from .callbacks import Callback, EpochStats, FitResult, TrainState
from .distributed import (all_reduce_sum, broadcast_buffers, main_first, peer_lost,
                          same_everywhere, world)
from .metrics import evaluate
from .optim import make_optimizer
from .speedups import training_twin, uses_bf16

__all__ = ["fit"]


def _emit(callbacks: Sequence[Callback], event: str, *args) -> None:
    for cb in callbacks:
        getattr(cb, event)(*args)


def fit(model: nn.Module, train: ImageSet | FeatureSet, val: ImageSet | FeatureSet | None = None, *,
        config: TrainConfig, preprocess: Preprocess | None, run_dir: str | Path | None = None,
        meta: dict | None = None, resume: bool = False, callbacks: Sequence[Callback] = (),
        device: str | torch.device = "cpu", augment: Callable | None = None,
        param_groups: list[dict] | None = None, task: Task = CLASSIFICATION,
        verbose: bool = True, log: Callable[[str], None] = print) -> FitResult:
    """Train `model` on `train`, validating on `val` after each epoch.

    The task (classification unless given) supplies the loss and the metrics; the
    data's targets are checked against it before the first step. `train` is an
    ImageSet with its `preprocess`, or a FeatureSet (embeddings) with preprocess None.

    With `run_dir`, every epoch is saved atomically (weights, meta.json with `meta`
    merged in, optimizer and RNG state), and `resume=True` continues from the last
    saved epoch to the same result as an uninterrupted run. Ctrl-C raises
    TrainingInterrupted after keeping the last complete epoch; a NaN or infinite loss
    raises TrainingError naming the epoch and batch.
    """
    _check_preprocess(train, val, preprocess)
    tune_malloc()  # training's own process setting (DESIGN.md); importing convlab leaves malloc alone
    rank, size = world()
    device = torch.device(device)
    run_dir = Path(run_dir) if run_dir is not None else None
    torch.manual_seed(config.seed)
    model.to(device)
    sync_bn = size > 1 and getattr(config, "sync_bn", False)
    # forward and backward run through a faster twin sharing the model's parameters and
    # buffers (speedups.py); callbacks, the optimizer and checkpoints see `model` itself
    with training_twin(model, channels_last=config.channels_last,
                       sync_bn=device if sync_bn else None) as (twin, channels_last):
        return _fit(model, train, val, config=config, preprocess=preprocess, run_dir=run_dir,
                    meta=meta, resume=resume, callbacks=callbacks, device=device,
                    augment=augment, param_groups=param_groups, task=task, verbose=verbose, log=log,
                    channels_last=channels_last, rank=rank, size=size, twin=twin)


def _check_preprocess(train, val, preprocess: Preprocess | None) -> None:
    """Images need their Preprocess (uint8 -> the model's input); embeddings take none.
    Checked before anything starts, rather than failing inside the first batch."""
    for role, data in (("training", train), ("validation", val)):
        if isinstance(data, ImageSet) and preprocess is None:
            raise ConfigError(f"fit: the {role} data is an ImageSet, which needs its Preprocess "
                              f"(preprocess=...; models.default_preprocess gives a model's); "
                              f"only a FeatureSet takes preprocess=None")
        if isinstance(data, FeatureSet) and preprocess is not None:
            raise ConfigError(f"fit: the {role} data is a FeatureSet (embeddings), which takes no "
                              f"Preprocess; pass preprocess=None")


def _fit(model, train, val, *, config, preprocess, run_dir, meta, resume, callbacks, device,
         augment, param_groups, task, verbose, log, channels_last, rank, size,
         twin) -> FitResult:
    from torch.nn.parallel import DistributedDataParallel

    main = rank == 0
    amp = uses_bf16(config.precision, device)
    optimizer = make_optimizer(param_groups if param_groups is not None else
                               [p for p in model.parameters() if p.requires_grad], config)
    task.check_config(config)
    task.check_targets(train.labels, train.num_classes, train.name)
    loss_fn = task.loss(config)
    # the craft the config asks for (schedule, regularisers, init, augmentation), checked here
    from ..data.augment import make_augment
    from .regularize import craft_callbacks
    callbacks = [*craft_callbacks(config), *callbacks]
    if augment is None:  # the image part of config.augment, inside the task's own (box-aware)
        image_augment = (make_augment(task.image_augment(config.augment), preprocess.size)
                         if preprocess is not None else None)
        augment = task.augment(config, image_augment)
    state = TrainState(model, optimizer, config)
    start_epoch = _resume(run_dir, model, optimizer, callbacks, state) if resume else 0
    net = (DistributedDataParallel(twin, device_ids=[device.index] if device.type == "cuda" else None)
           if size > 1 else twin)
    batches = Batches(train, config.batch_size, preprocess, shuffle=True, seed=config.seed,
                      device=device, augment=augment, rank=rank, world_size=size,
                      channels_last=channels_last)
    state.steps_per_epoch = len(batches)
    state.step = start_epoch * len(batches)
    base_meta = _run_meta(meta, config, preprocess, train, task)
    _emit(callbacks, "on_fit_start", state)
    saved = start_epoch  # the last epoch in run_dir
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            state.epoch = epoch
            t0 = time.perf_counter()
            net.train()
            batches.set_epoch(epoch)
            _emit(callbacks, "on_epoch_start", state)
            bar = progress(len(batches), f"Epoch {epoch}/{config.epochs}", "batch",
                           enabled=verbose and main)
            try:
                loss_sum, seen, counts = _train_epoch(
                    net, batches, state, callbacks, bar, loss_fn=loss_fn, task=task, amp=amp,
                    device=device, size=size, n_train=len(train), run_dir=run_dir)
            finally:
                bar.close()
            broadcast_buffers(model)  # every rank evaluates (and rank 0 saves) one set of BN stats
            stats = _epoch_stats(state, model, val, loss_sum, seen, counts, t0,
                                 preprocess=preprocess, loss_fn=loss_fn, task=task,
                                 device=device, channels_last=channels_last)
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


def _train_epoch(net: nn.Module, batches: Batches, state: TrainState, callbacks: Sequence[Callback],
                 bar, *, loss_fn, task: Task, amp: bool, device: torch.device, size: int,
                 n_train: int, run_dir: Path | None) -> tuple[torch.Tensor, int, torch.Tensor]:
    """One pass over `batches`: (loss summed over samples, samples seen, the task's
    training counts), for this process's share."""
    loss_sum = torch.zeros((), dtype=torch.float64)
    counts = 0  # the sum of the task's training counts (a tensor after one batch)
    seen = 0
    for b, (x, y) in enumerate(batches):
        state.batch = b
        _emit(callbacks, "on_batch_start", state)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
            # a rank's share of a short last batch can be empty
            loss = loss_fn(logits, y) if len(y) else logits.sum() * 0.0
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(
                f"loss became {value} at epoch {state.epoch}, batch {b + 1}; try a lower "
                f"learning rate (now {state.optimizer.param_groups[0]['lr']:g})"
                + (f"; {run_dir} still holds epoch {state.epoch - 1}" if run_dir and state.epoch > 1 else ""))
        state.optimizer.zero_grad(set_to_none=True)
        if size > 1:
            # DDP averages gradients over ranks with equal weight; weighting each
            # rank's mean loss by its share of this global batch makes the update
            # one process's, also when the batch does not split evenly.
            global_n = min(state.config.batch_size, n_train - b * state.config.batch_size)
            (loss * (len(y) * size / global_n)).backward()
        else:
            loss.backward()
        state.optimizer.step()
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
        if state.stop:
            break
    return loss_sum, seen, counts


def _epoch_stats(state: TrainState, model: nn.Module, val, loss_sum: torch.Tensor, seen: int,
                 counts: torch.Tensor, t0: float, *, preprocess, loss_fn, task: Task,
                 device: torch.device, channels_last: bool) -> EpochStats:
    """The epoch's line: training loss and metrics summed over every process, and the
    validation loss and accuracy (evaluated on the user's module, as callbacks see it)."""
    totals = all_reduce_sum(torch.cat([loss_sum.view(1),
                                       torch.tensor([float(seen)], dtype=torch.float64), counts]))
    train_metrics = task.train_metrics(totals[2:], int(totals[1]))
    val_loss = val_acc = None
    extra, headline = {}, "acc"
    if val is not None and len(val):
        r = evaluate(model, val, preprocess, device=device, channels_last=channels_last,
                     loss_fn=loss_fn, task=task)
        val_loss, val_acc, headline = r.loss, r.score, r.headline
        extra.update(r.epoch_extras())
    return EpochStats(state.epoch, float(totals[0] / totals[1]), train_metrics.get("acc"), val_loss,
                      val_acc, float(state.optimizer.param_groups[0]["lr"]),
                      time.perf_counter() - t0, extra, headline)


def _run_meta(meta: dict | None, config: TrainConfig, preprocess: Preprocess | None,
              train: ImageSet | FeatureSet, task: Task) -> dict:
    """What every checkpoint's meta.json holds besides the metrics: the caller's `meta`,
    the config, preprocessing, classes, task and library versions."""
    base = dict(meta or {})
    base.setdefault("train", config.to_dict())
    if preprocess is not None:
        base.setdefault("preprocess", preprocess.to_dict())
    base.setdefault("classes", list(train.classes))
    base.setdefault("task", task.name)
    if task.meta():
        base.setdefault(task.name, task.meta())
    base["versions"] = library_versions()
    return base


def _resume(run_dir: Path | None, model, optimizer, callbacks, state: TrainState) -> int:
    """The epoch to continue after (0 without a checkpoint), the same in every process."""
    start_epoch = 0
    if run_dir is not None:
        with main_first():  # rank 0 finishes an interrupted save before the others read
            if (run_dir / "meta.json").exists():
                start_epoch = _restore(run_dir, model, optimizer, callbacks, state)
    lo, hi = same_everywhere(start_epoch)
    if lo != hi:
        raise CheckpointError(f"--resume: the processes found different checkpoints in {run_dir} "
                              f"(epochs {lo} to {hi}); on several machines the run directory "
                              f"must be on a file system they all share")
    return start_epoch


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
