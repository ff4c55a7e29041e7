"""`convlab augment-preview`: what the augmentation flags do to real training images."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import AugmentConfig
from ..errors import ConfigError
from ..recipes import RECIPES
from .options import DATA_HELP, add_augment_options, augment_config_from_args

__all__ = ["register"]


def cmd_augment_preview(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_dataset
    from ..data.augment import check_augment, preview_batch
    from ..recipes import recipe
    from ..figures.base import image_grid

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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("augment-preview", help="PNG grid of training images and their augmented versions",
                       description="Show what the augmentation flags (or a recipe's augmentation) "
                       "do to real training images: each original above its augmented version.")
    p.add_argument("dataset", help=DATA_HELP)
    p.add_argument("-n", type=int, default=16, help="images to show (default 16)")
    p.add_argument("--out", default="augment-preview.png", help="PNG to write (default augment-preview.png)")
    p.add_argument("--seed", type=int, default=0, help="which images and which random draws (default 0)")
    p.add_argument("--image-size", type=int, help="resize folder images to this many pixels square")
    p.add_argument("--recipe", choices=list(RECIPES), help="use this recipe's augmentation "
                   "(flags given override it)")
    add_augment_options(p)
    p.set_defaults(run=cmd_augment_preview)
