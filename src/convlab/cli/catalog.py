"""Listing commands: datasets, models, recipes."""
from __future__ import annotations

import argparse

from ..tables import FORMATS, render_table

__all__ = ["register"]


def cmd_datasets(args: argparse.Namespace) -> int:
    from ..data import DATASETS

    rows = []
    for spec in DATASETS.values():
        c, h, w = spec.shape
        rows.append([spec.name, spec.sizes.get("train"), spec.sizes.get("test"), len(spec.classes),
                     f"{c}x{h}x{w}", "yes" if spec.available() else "no", spec.description])
    print(render_table(["name", "train", "test", "classes", "shape", "available", "description"],
                       rows, args.format))
    if args.format == "table":
        print("\nAny folder of class subfolders works too: convlab train path/to/folder --model small_cnn")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import MODELS, count_parameters

    rows = []
    for spec in MODELS.values():
        if args.family and spec.family != args.family:
            continue
        params = count_parameters(spec.name, args.classes)
        rows.append([spec.name, spec.family, params,
                     f"{spec.channels}x{spec.input_size}x{spec.input_size}", spec.description])
    print(render_table(["name", "family", "parameters", "input", "description"], rows, args.format))
    if args.format == "table":
        print(f"\nparameters counted for {args.classes} classes at the default input")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from ..recipes import RECIPES

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
    p = sub.add_parser("datasets", help="list the built-in datasets and whether each is available")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.set_defaults(run=cmd_datasets)

    p = sub.add_parser("models", help="list the registered models with parameter counts")
    p.add_argument("--family", help="only this family (lecture, zoo, ...)")
    p.add_argument("--classes", type=int, default=10, help="classes to count parameters for")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("recipes", help="list the named training recipes (convlab train --recipe)")
    p.set_defaults(run=cmd_recipes)
