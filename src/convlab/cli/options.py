"""The options that several commands share: training (epochs, optimizer, precision,
devices), training craft (schedules, regularisation, initialisation, normalisation,
augmentation, recipes), and the evaluation summary they print."""
from __future__ import annotations

import argparse
import math
from dataclasses import fields

from ..config import (INITS, LOSSES, MONITORS, NORMALIZE, OPTIMIZERS, PRECISIONS, SCHEDULES,
                      AugmentConfig, TrainConfig)
from ..errors import ConfigError
from ..tables import render_table

DATA_HELP = "a built-in dataset (see: convlab datasets) or a folder of class subfolders"
MODEL_HELP = "a registered model (see: convlab models)"

__all__ = ["DATA_HELP", "MODEL_HELP", "add_train_options", "add_craft_options", "add_augment_options", "train_config_from_args", "craft_config", "augment_config_from_args", "model_from_args", "print_eval"]


# flag -> TrainConfig field, type, help; default None means "not given" (keep the
# recipe's value or TrainConfig's default)
_CRAFT_FLAGS = [
    ("--schedule", "schedule", str, f"learning-rate schedule: {', '.join(SCHEDULES)}"),
    ("--warmup", "warmup", float, "epochs of linear warm-up from 0 (with any schedule)"),
    ("--peak", "peak", float, "one-cycle: fraction of the run rising to --lr (default 0.25)"),
    ("--step-every", "step_every", int, "step schedule: decay every N epochs (or batches)"),
    ("--step-unit", "step_unit", str, "step schedule: count 'epoch' (default) or 'batch'"),
    ("--step-gamma", "step_gamma", float, "step schedule: factor per decay (default 0.1)"),
    ("--exp-gamma", "exp_gamma", float, "exponential schedule: factor per epoch (default 0.97)"),
    ("--decay", "decay", float, "inverse-time 1/(1+kt) and exp(-kt) schedules: k per epoch"),
    ("--label-smoothing", "label_smoothing", float, "cross-entropy label smoothing (e.g. 0.1)"),
    ("--l1", "l1", float, "L1 strength on conv/linear weights (proximal step)"),
    ("--max-norm", "max_norm", float, "max L2 norm of each unit's incoming weights"),
    ("--dropout", "dropout", float, "dropout rate, for models with dropout layers"),
    ("--patience", "patience", int, "early stopping: epochs without improvement (needs "
                                    "--val-split); restores the best epoch's weights"),
    ("--monitor", "monitor", str, f"early stopping watches: {', '.join(MONITORS)}"),
    ("--min-delta", "min_delta", float, "early stopping: smallest change that counts"),
    ("--init", "init", str, f"weight initialisation: {', '.join(INITS)} "
                            f"(gaussian = std 0.001)"),
    ("--init-bias", "init_bias", float, "bias constant with --init (e.g. 0.01)"),
    ("--normalize", "normalize", str, "input normalisation: model (registry's mean/std), "
                                      "channel (per-channel mean/std of the training split), "
                                      "image (subtract the training split's mean image)"),
]


_CHOICES = {"schedule": SCHEDULES, "step_unit": ("epoch", "batch"), "monitor": MONITORS,
            "init": INITS, "normalize": NORMALIZE}


_AUGMENT_FLAGS = [
    ("--crop", "crop", int, "random crop after zero-padding N pixels per side (e.g. 2 or 4)"),
    ("--resized-crop", "resized_crop", float, "random-resized crop: smallest area fraction "
                                              "(e.g. 0.35; scaled back to full size)"),
    ("--hflip", "hflip", float, "probability of a horizontal flip (e.g. 0.5)"),
    ("--vflip", "vflip", float, "probability of a vertical flip"),
    ("--translate", "translate", float, "largest shift as a fraction of the side (e.g. 0.1)"),
    ("--rotate", "rotate", float, "largest rotation in degrees either way (e.g. 10)"),
    ("--jitter", "jitter", float, "colour jitter strength: brightness/contrast/saturation "
                                  "factors in [1-s, 1+s] (e.g. 0.4)"),
    ("--lighting", "lighting", float, "AlexNet PCA lighting noise std (AlexNet: 0.1)"),
    ("--erase", "erase", float, "probability of random erasing of one rectangle (e.g. 0.25)"),
]


def add_augment_options(p: argparse.ArgumentParser) -> None:
    """Augmentation flags (training only; never applied to validation or test data)."""
    g = p.add_argument_group("augmentation (training batches only, fresh every epoch)")
    for flag, dest, typ, text in _AUGMENT_FLAGS:
        g.add_argument(flag, dest=dest, type=typ, default=None, help=text + " (default off)")


class _DefaultFloat(float):
    """A default value that was not typed: a recipe's value wins over it."""


class _DefaultInt(int):
    """A default value that was not typed: a recipe's value wins over it."""


class _DefaultStr(str):
    """A default value that was not typed: a recipe's value wins over it."""


_MARKS = {float: _DefaultFloat, int: _DefaultInt, str: _DefaultStr}


def _plain(v):
    return str(v) if isinstance(v, str) else int(v) if isinstance(v, _DefaultInt) else \
        float(v) if isinstance(v, _DefaultFloat) else v


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options every training command shares (train, transfer, ...)."""
    d = TrainConfig()
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the data (default {d.epochs})")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"images per optimizer step (default {d.batch_size})")
    g.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help=f"optimizer (default {d.optimizer})")
    g.add_argument("--momentum", type=float, default=d.momentum,
                   help=f"momentum for momentum/nesterov (default {d.momentum})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="L2 weight decay (default 0)")
    g.add_argument("--loss", choices=LOSSES, default=d.loss, help=f"loss criterion (default {d.loss})")
    g.add_argument("--val-split", type=float, default=d.val_split,
                   help=f"fraction held out for validation, stratified (default {d.val_split})")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (default 0)")
    g.add_argument("--no-channels-last", action="store_true",
                   help="keep NCHW memory layout (channels_last is faster for convnets on CPU)")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="fp32, or bf16: bfloat16 autocast, faster for convnets on a CPU "
                        "with AVX512-BF16 or AMX (auto: bf16 on CUDA, fp32 on CPU; default auto)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine, started through torchrun; each trains on "
                        "its share of every batch (DistributedDataParallel; default 1)")
    g.add_argument("--sync-bn", action="store_true",
                   help="with several processes: BatchNorm statistics over the whole global "
                        "batch (PyTorch's SyncBatchNorm on CUDA, all-reduced sums on CPU)")
    add_craft_options(p)


def add_craft_options(p: argparse.ArgumentParser) -> None:
    """Schedule, regularisation, initialisation and normalisation flags, plus augmentation.

    The training options already on `p` keep their defaults, marked, so that a --recipe
    knows which ones were typed (`--weight-decay 0` overrides a recipe's weight decay).
    """
    for action in p._actions:
        if type(action.default) in _MARKS:
            action.default = _MARKS[type(action.default)](action.default)
    d = TrainConfig()
    g = p.add_argument_group("schedule, regularisation, initialisation")
    for flag, dest, typ, text in _CRAFT_FLAGS:
        default = getattr(d, dest)
        g.add_argument(flag, dest=dest, type=typ, default=None, choices=_CHOICES.get(dest),
                       help=f"{text} (default {default})" if "default" not in text else text)
    add_augment_options(p)


def augment_config_from_args(args: argparse.Namespace,
                             base: AugmentConfig = AugmentConfig()) -> AugmentConfig:
    """`base` with the augmentation flags that were given."""
    given = {dest: getattr(args, dest) for _, dest, _, _ in _AUGMENT_FLAGS
             if getattr(args, dest, None) is not None}
    return AugmentConfig(**{**base.__dict__, **given})


def craft_config(args: argparse.Namespace, core: dict, overrides: dict) -> TrainConfig:
    """The TrainConfig of a training command: the recipe's (or the defaults), then the
    core options that differ from their defaults, the craft flags that were given, and
    `overrides` (set by the command itself)."""
    from ..recipes import recipe

    name = getattr(args, "recipe", None)
    base = recipe(name).config if name else TrainConfig()
    values = base.to_dict()
    values.update({k: _plain(v) for k, v in core.items()
                   if not name or not isinstance(v, tuple(_MARKS.values()))})
    values.update({dest: getattr(args, dest) for _, dest, _, _ in _CRAFT_FLAGS
                   if getattr(args, dest, None) is not None})
    values["augment"] = augment_config_from_args(args, base.augment)
    values.update(overrides)
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in names})


def train_config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    return craft_config(args, dict(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, loss=args.loss, val_split=args.val_split,
        seed=args.seed, channels_last=not args.no_channels_last, precision=args.precision,
        sync_bn=getattr(args, "sync_bn", False)), overrides)


def model_from_args(args: argparse.Namespace) -> str:
    """--model, or the --recipe's model."""
    from ..recipes import recipe

    if getattr(args, "model", None):
        return args.model
    if getattr(args, "recipe", None):
        return recipe(args.recipe).model
    raise ConfigError("give a model (--model NAME, see: convlab models) or a recipe "
                      "(--recipe NAME, see: convlab recipes)")


def print_eval(result, title: str = "test") -> None:
    """The evaluation summary: top-1/top-5 and per-class accuracy (detection: mAP50,
    mAP50-95 and AP50 per class)."""
    if hasattr(result, "map50"):
        print(f"{title}: mAP50 {result.map50:.4f}, mAP50-95 {result.map50_95:.4f}, loss "
              f"{result.loss:.4f} on {result.n:,} images")
        print(render_table(["class", "AP50"], [[c, round(a, 4)] for c, a in result.ap50.items()]))
        return
    print(f"{title}: top-1 accuracy {result.top1:.4f} (error {1 - result.top1:.4f}), "
          f"top-5 accuracy {result.top5:.4f} (error {1 - result.top5:.4f}) on {result.n:,} images")
    rows = [[c, int(result.confusion[i].sum()), None if math.isnan(a) else round(a, 4)]
            for i, (c, a) in enumerate(result.per_class.items())]
    print(render_table(["class", "images", "accuracy"], rows))
