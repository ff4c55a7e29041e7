"""Core commands: datasets, models, train, evaluate, predict, demo."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..config import LOSSES, OPTIMIZERS, PRECISIONS, TrainConfig
from ..errors import CheckpointError, DatasetError
from ..tables import render_table
from ..train.distributed import torchrun_command

__all__ = ["register", "add_train_options", "train_config_from_args", "print_eval"]


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
                   help="fp32, or bf16: bfloat16 autocast, 1.3-1.7x faster for convnets on a CPU "
                        "with AVX512-BF16 or AMX (auto: bf16 on CUDA, fp32 on CPU; default auto)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine, started through torchrun; each trains on "
                        "its share of every batch (DistributedDataParallel; default 1)")
    g.add_argument("--sync-bn", action="store_true",
                   help="with several processes: BatchNorm statistics over the whole global "
                        "batch (PyTorch's SyncBatchNorm on CUDA, all-reduced sums on CPU)")
    from .craft_train import add_craft_options
    add_craft_options(p)


def train_config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    from .craft_train import craft_config  # --recipe, schedules, regularisation, augmentation
    return craft_config(args, dict(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, loss=args.loss, val_split=args.val_split,
        seed=args.seed, channels_last=not args.no_channels_last, precision=args.precision,
        sync_bn=getattr(args, "sync_bn", False)), overrides)


def print_eval(result, title: str = "test") -> None:
    """The evaluation summary: top-1/top-5 and per-class accuracy."""
    print(f"{title}: top-1 accuracy {result.top1:.4f} (error {1 - result.top1:.4f}), "
          f"top-5 accuracy {result.top5:.4f} (error {1 - result.top5:.4f}) on {result.n:,} images")
    rows = [[c, int(result.confusion[i].sum()), None if math.isnan(a) else round(a, 4)]
            for i, (c, a) in enumerate(result.per_class.items())]
    print(render_table(["class", "images", "accuracy"], rows))


# ---------------------------------------------------------------------------- commands

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


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import train
    from .craft_train import model_from_args

    args.model = model_from_args(args)  # --model, or the --recipe's model
    cfg = train_config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / f"{args.model}-{Path(args.dataset).name}"
    result = train(args.dataset, args.model, cfg, out=out, resume=args.resume,
                   overwrite=args.overwrite, device=args.device, channels=args.channels,
                   image_size=args.image_size, strict=args.strict)
    if result.test is not None:
        print(f"test: top-1 accuracy {result.test.top1:.4f}, top-5 accuracy {result.test.top5:.4f} "
              f"({result.test.n:,} images)")
    from ..train import is_main, resolve_device
    if is_main():  # curves, confusion matrix (PNG + JSON counts), most confident mistakes
        from ..report import write_run_plots
        from ..train.distributed import alone
        with alone():  # the other ranks do not join this evaluation
            written = write_run_plots(out, device=resolve_device(args.device))
        print(f"plots: {', '.join(p.name for p in written.values())} (convlab report {out} "
              f"puts them in one page)")
    print(f"run saved in {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..checkpoint import load_run
    from ..data import dataset_spec, list_datasets, load_dataset
    from ..train import evaluate, resolve_device

    device = resolve_device(args.device)
    run = load_run(args.run_dir, device)
    name = args.dataset or run.meta.get("dataset", {}).get("name")
    if not name:
        raise DatasetError(f"{args.run_dir}: the run does not name its dataset; give one: "
                           f"convlab evaluate RUN DATASET")
    split = args.split or ("test" if name in list_datasets() and "test" in dataset_spec(name).sizes
                           else "train")
    pre = run.preprocess
    data = load_dataset(name, split, channels=pre.channels,
                        size=None if name in list_datasets() else pre.size[0])
    if list(data.classes) != run.classes:
        raise CheckpointError(f"the run's classes {run.classes} differ from the dataset's "
                              f"{list(data.classes)}; evaluate on data with the same classes")
    result = evaluate(run.model, data, pre, device=device)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_eval(result, f"{name} ({split})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..predict import Predictor

    predictor = Predictor(args.run_dir, backend=args.backend)
    for p in predictor.predict_files(args.images, top=args.top):
        print(p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out))


def register(sub: argparse._SubParsersAction) -> None:
    from ..data import list_datasets
    from ..models import list_models
    from ..tables import FORMATS

    p = sub.add_parser("datasets", help="list the built-in datasets and whether each is available")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.set_defaults(run=cmd_datasets)

    p = sub.add_parser("models", help="list the registered models with parameter counts")
    p.add_argument("--family", help="only this family (lecture, zoo, ...)")
    p.add_argument("--classes", type=int, default=10, help="classes to count parameters for")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("train", help="train a model from scratch on a dataset or a folder",
                       description="Train a registered model with the lecture's recipe: model, "
                       "batches, loss criterion, optimizer. Saves a run directory every epoch.")
    p.add_argument("dataset", help=f"{', '.join(list_datasets())}, or a folder of class subfolders")
    p.add_argument("--model", help=f"one of: {', '.join(list_models())} (or give --recipe)")
    from ..recipes import list_recipes
    p.add_argument("--recipe", choices=list_recipes(),
                   help="start from a named recipe (model, schedule, regularisation, "
                        "augmentation; see: convlab recipes); options you set override it")
    p.add_argument("--out", help="run directory (default runs/MODEL-DATASET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert images to 1 or 3 channels")
    p.add_argument("--image-size", type=int, help="resize images to this many pixels square")
    p.add_argument("--strict", action="store_true", help="unreadable files in a folder are an error")
    add_train_options(p)
    p.set_defaults(run=torchrun_command(cmd_train))

    p = sub.add_parser("evaluate", help="top-1, top-5 and per-class accuracy of a run")
    p.add_argument("run_dir", metavar="run", help="run directory")  # dest "run" is the command
    p.add_argument("dataset", nargs="?", help="dataset name or folder (default: the run's own)")
    p.add_argument("--split", choices=("train", "test"), help="split (default test where there is one)")
    p.add_argument("--json", action="store_true", help="print the full result (with confusion matrix) as JSON")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities for image files")
    p.add_argument("run_dir", metavar="run", help="run directory")  # dest "run" is the command
    p.add_argument("images", nargs="+", help="image files (any mode and size)")
    p.add_argument("--top", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch, or onnx: ONNX Runtime on RUN/model.onnx (convlab export RUN first)")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("demo", help="the main job on the bundled data (what `make demo` runs)")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its runs")
    p.set_defaults(run=cmd_demo)
