"""Training-craft options shared by every training command (schedules, regularisation,
initialisation, normalisation, augmentation, recipes) and the commands augment-preview
and recipes."""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from ..config import INITS, MONITORS, NORMALIZE, SCHEDULES, AugmentConfig, TrainConfig
from ..errors import ConfigError

__all__ = ["register", "add_craft_options", "add_augment_options", "craft_config",
           "augment_config_from_args", "model_from_args"]

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


def model_from_args(args: argparse.Namespace) -> str:
    """--model, or the --recipe's model."""
    from ..recipes import recipe

    if getattr(args, "model", None):
        return args.model
    if getattr(args, "recipe", None):
        return recipe(args.recipe).model
    raise ConfigError("give a model (--model NAME, see: convlab models) or a recipe "
                      "(--recipe NAME, see: convlab recipes)")


# ---------------------------------------------------------------------------- commands

def cmd_augment_preview(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_dataset
    from ..data.augment import check_augment, preview_batch
    from ..recipes import recipe
    from ..viz import image_grid

    base = recipe(args.recipe).config.augment if args.recipe else AugmentConfig()
    cfg = augment_config_from_args(args, base)
    if not cfg.active:
        raise ConfigError("no augmentation given; add flags such as --crop 2 --hflip 0.5 "
                          "--rotate 10, or --recipe NAME")
    if args.n < 1:
        raise ConfigError(f"-n must be at least 1; got {args.n}")
    data = load_dataset(args.dataset, "train", size=args.image_size)
    check_augment(cfg, data.images.shape[-2:])
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(data), generator=gen)[:args.n]
    originals = data.images[idx]                                      # (n, C, H, W) uint8
    torch.manual_seed(args.seed)
    augmented = preview_batch(originals, cfg)                         # (n, C, H, W) 0..1
    cols = min(args.n, 8)
    cells, titles = [], []
    for start in range(0, args.n, cols):
        part = slice(start, start + cols)
        cells += [originals[part].float() / 255, augmented[part]]
        titles += [data.classes[int(c)] for c in data.labels[idx][part]] + ["augmented"] * len(
            originals[part])
    out = Path(args.out)
    image_grid(torch.cat(cells), out, titles=titles, ncols=cols,
               title=f"{data.name}: originals and augmented ({cfg.describe()})")
    print(f"augmentation: {cfg.describe()}")
    print(f"wrote {out} ({args.n} originals, each above its augmented version)")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from ..recipes import RECIPES
    from ..tables import render_table

    rows = []
    for r in RECIPES.values():
        c = r.config
        rows.append([r.name, r.model, r.dataset, c.epochs, c.batch_size,
                     f"{c.optimizer} lr {c.lr:g}, {c.schedule}", c.augment.describe(),
                     r.description])
    print(render_table(["name", "model", "dataset", "epochs", "batch", "optimizer",
                        "augmentation", "description"], rows))
    print("\nrun one: convlab train DATASET --recipe NAME (options you give override it)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..data import list_datasets
    from ..recipes import list_recipes

    p = sub.add_parser("augment-preview", help="PNG grid of training images and their augmented versions",
                       description="Show what the augmentation flags (or a recipe's augmentation) "
                       "do to real training images: each original above its augmented version.")
    p.add_argument("dataset", help=f"{', '.join(list_datasets())}, or a folder of class subfolders")
    p.add_argument("-n", type=int, default=16, help="images to show (default 16)")
    p.add_argument("--out", default="augment-preview.png", help="PNG to write (default augment-preview.png)")
    p.add_argument("--seed", type=int, default=0, help="which images and which random draws (default 0)")
    p.add_argument("--image-size", type=int, help="resize folder images to this many pixels square")
    p.add_argument("--recipe", choices=list_recipes(), help="use this recipe's augmentation "
                   "(flags given override it)")
    add_augment_options(p)
    p.set_defaults(run=cmd_augment_preview)

    p = sub.add_parser("recipes", help="list the named training recipes (convlab train --recipe)")
    p.set_defaults(run=cmd_recipes)
