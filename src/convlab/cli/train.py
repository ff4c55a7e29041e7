"""Training from scratch and using the result: train, evaluate, predict."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CheckpointError, DatasetError
from ..recipes import RECIPES
from .options import (DATA_HELP, MODEL_HELP, add_train_options, model_from_args, print_eval,
                      train_config_from_args)

__all__ = ["register"]


def cmd_train(args: argparse.Namespace) -> int:
    from ..training import train

    args.model = model_from_args(args)  # --model, or the --recipe's model
    cfg = train_config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / f"{args.model}-{Path(args.dataset).name}"
    result = train(args.dataset, args.model, cfg, out=out, resume=args.resume,
                   overwrite=args.overwrite, device=args.device, channels=args.channels,
                   image_size=args.image_size, strict=args.strict, pretrained=args.pretrained)
    if result.test is not None and hasattr(result.test, "map50"):
        print(f"test: mAP50 {result.test.map50:.4f}, mAP50-95 {result.test.map50_95:.4f} "
              f"({result.test.n:,} images)")
    elif result.test is not None:
        print(f"test: top-1 accuracy {result.test.top1:.4f}, top-5 accuracy {result.test.top5:.4f} "
              f"({result.test.n:,} images)")
    from ..training import is_main, resolve_device
    if is_main():  # evaluation.json (counts, most confident mistakes), then curves and figures
        from ..figures.report import write_run_plots
        from ..training.distributed import alone
        from ..training.evaluation import evaluate_run
        with alone():  # the other ranks do not join this evaluation
            evaluation = evaluate_run(out, device=resolve_device(args.device))
        written = write_run_plots(out, data=evaluation.data if evaluation else None)
        names = [p.name for p in written.values()]
        if evaluation is not None:
            names.insert(int("history" in written), evaluation.path.name)
        print(f"plots: {', '.join(names)} (convlab report {out} puts them in one page)")
    print(f"run saved in {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..checkpoint import load_run
    from ..data import list_datasets, load_dataset
    from ..training import evaluate, resolve_device
    from ..training.evaluation import evaluation_data
    from ..training.splits import has_test_split
    from ..tasks import task_of

    device = resolve_device(args.device)
    run = load_run(args.run_dir, device)
    pre = run.preprocess
    name = args.dataset or run.meta.get("dataset", {}).get("name")
    if not name:
        raise DatasetError(f"{args.run_dir}: the run does not name its dataset; give one: "
                           f"convlab evaluate RUN DATASET")
    if args.dataset is None and args.split is None:
        # the set `convlab report` evaluates: the test split, else the run's own
        # validation split (not the whole folder, which is mostly training images)
        data, split = evaluation_data(run)
    else:
        split = args.split or ("test" if has_test_split(name) else "train")
        data = load_dataset(name, split, channels=pre.channels,
                            size=None if name in list_datasets() else pre.size[0])
    task = task_of(run.meta)
    data_task = getattr(data, "task", "classification")
    if data_task != task.name:
        raise CheckpointError(f"{args.run_dir} is a {task.name} run but {name} is {data_task} "
                              f"data; evaluate it on {task.name} data")
    if list(data.classes) != run.classes:
        raise CheckpointError(f"the run's classes {run.classes} differ from the dataset's "
                              f"{list(data.classes)}; evaluate on data with the same classes")
    result = evaluate(run.model, data, pre, device=device, task=task)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_eval(result, f"{name} ({split})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..checkpoint import read_meta
    from ..predict import Predictor

    if read_meta(args.run_dir).get("task") == "detection":  # boxes, as convlab detect prints them
        from .detect import cmd_detect
        return cmd_detect(argparse.Namespace(
            images=args.images, model=args.run_dir, size=None, score=None, iou=0.4, json=False,
            out=None, save_labels=None, backend=args.backend))

    predictor = Predictor(args.run_dir, backend=args.backend)
    for p in predictor.predict_files(args.images, top=args.top):
        print(p)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from scratch on a dataset or a folder",
                       description="Train a registered model with the lecture's recipe: model, "
                       "batches, loss criterion, optimizer. Saves a run directory every epoch.")
    p.add_argument("dataset", help=DATA_HELP)
    p.add_argument("--model", help=MODEL_HELP + " (or give --recipe)")
    p.add_argument("--recipe", choices=list(RECIPES),
                   help="start from a named recipe (model, schedule, regularisation, "
                        "augmentation; see: convlab recipes); options you set override it")
    p.add_argument("--out", help="run directory (default runs/MODEL-DATASET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert images to 1 or 3 channels")
    p.add_argument("--image-size", type=int, help="resize images to this many pixels square")
    p.add_argument("--strict", action="store_true", help="unreadable files in a folder are an error")
    p.add_argument("--pretrained", action="store_true",
                   help="start from the model's offline weights: the bundled ImageNet ones, or "
                        "for tiny_yolo_face on detection data the face-api face detector "
                        "(a new head for other classes)")
    add_train_options(p)
    p.set_defaults(run=cmd_train, torchrun=True)

    p = sub.add_parser("evaluate", help="top-1, top-5 and per-class accuracy of a run "
                                        "(detection runs: mAP50, mAP50-95, AP50 per class)")
    p.add_argument("run_dir", metavar="run", help="run directory")  # dest "run" is the command
    p.add_argument("dataset", nargs="?",
                   help="dataset name or folder, all of its --split (default: the run's own "
                        "test split, else the run's validation split, as convlab report)")
    p.add_argument("--split", choices=("train", "test"),
                   help="split of the dataset (default test where there is one, else train)")
    p.add_argument("--json", action="store_true", help="print the full result (with confusion matrix) as JSON")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities for image files (a detection "
                                       "run: its boxes, as convlab detect)")
    p.add_argument("run_dir", metavar="run", help="run directory")  # dest "run" is the command
    p.add_argument("images", nargs="+", help="image files (any mode and size)")
    p.add_argument("--top", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch, or onnx: ONNX Runtime on RUN/model.onnx (convlab export RUN first)")
    p.set_defaults(run=cmd_predict)
