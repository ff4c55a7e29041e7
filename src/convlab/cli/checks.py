"""Checks before a long run: lr-find (the learning-rate range test), overfit (can the
model memorise a few images?) and gradcheck (autograd against finite differences)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import LOSSES, OPTIMIZERS, PRECISIONS, TrainConfig
from ..tables import render_table
from .options import DATA_HELP, MODEL_HELP

__all__ = ["register"]


def _load_for_model(args: argparse.Namespace, config: TrainConfig):
    """(training images, fresh model, preprocessing, task) for DATA and --model."""
    from ..models import model_spec
    from ..training.run import model_for_data, prepare_data, task_for

    model_spec(args.model)  # an unknown name fails before any data is loaded
    train_set, _, _ = prepare_data(args.dataset, config, channels=args.channels,
                                   size=args.image_size)
    model, preprocess, kwargs = model_for_data(args.model, train_set, channels=args.channels)
    return train_set, model, preprocess, task_for(train_set, kwargs)


def cmd_lr_find(args: argparse.Namespace) -> int:
    from ..figures.plots import plot_lr_find
    from ..training import resolve_device
    from ..training.lr_find import lr_find

    config = TrainConfig(batch_size=args.batch_size, optimizer=args.optimizer,
                         momentum=args.momentum, weight_decay=args.weight_decay, loss=args.loss,
                         val_split=0.0, seed=args.seed, precision=args.precision)
    device = resolve_device(args.device)
    data, model, preprocess, task = _load_for_model(args, config)
    print(f"{data.describe()}; {args.optimizer}, batch {args.batch_size}, lr {args.start_lr:g} "
          f"-> {args.end_lr:g} over {args.steps} steps")
    result = lr_find(model, data, preprocess, config=config, task=task, start_lr=args.start_lr,
                     end_lr=args.end_lr, steps=args.steps, device=device)
    out = Path(args.out) if args.out else Path("runs") / f"lr-find-{args.model}-{Path(args.dataset).name}.png"
    plot_lr_find(result, out, title=f"{args.model} on {data.name}, {args.optimizer}, "
                                    f"batch {args.batch_size}")
    if args.json:
        print(json.dumps({k: v for k, v in result.to_dict().items()
                          if k not in ("lrs", "losses", "smoothed")}, indent=2))
    else:
        print(f"suggested learning rate: {result.suggestion:.2g}")
        print(f"why: {result.reason}")
    print(f"plot saved in {out}")
    return 0


def cmd_overfit(args: argparse.Namespace) -> int:
    from ..training import resolve_device
    from ..training.sanity import overfit

    data, model, preprocess, task = _load_for_model(args, TrainConfig(val_split=0.0, seed=args.seed))
    if task.name != "classification":
        from ..errors import ConfigError
        raise ConfigError(f"overfit memorises a few images until every one is classified right; "
                          f"for {task.name} data use lr-find, or train on a few images: "
                          f"convlab train DATA --val-split 0 and watch the loss")
    result = overfit(model, data, preprocess, n=args.n, lr=args.lr, max_epochs=args.max_epochs,
                     seed=args.seed, device=resolve_device(args.device))
    step = max(1, result.epochs // 10)
    rows = [[e + 1, loss, acc] for e, (loss, acc) in enumerate(zip(result.losses, result.accuracies))
            if e % step == 0 or e == result.epochs - 1]
    print(f"overfit check: {args.model} on {result.n} images of {data.name}, plain SGD "
          f"lr {args.lr:g}, no weight decay, no dropout")
    print(render_table(["epoch", "loss", "training accuracy"], rows))
    print(result.message)
    return 0 if result.reached else 1


def _some(names: list[str], k: int = 6) -> str:
    """'a, b, c' or 'a, b, c and 12 more'."""
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _format_index(index: list[int]) -> str:
    return "[" + ",".join(map(str, index)) + "]"


def cmd_gradcheck(args: argparse.Namespace) -> int:
    import torch

    from ..models import create_model, model_spec
    from ..training.sanity import gradcheck

    spec = model_spec(args.model)
    # small but valid: big models accept inputs far below their training size
    size = args.input_size or max(spec.min_input_size, 8 if spec.flexible_size else 32)
    channels = args.channels or spec.channels
    torch.manual_seed(args.seed)
    model = create_model(args.model, num_classes=args.classes, in_chans=channels,
                         **({"input_size": size} if spec.flexible_size else {}))
    x = torch.randn(args.batch, channels, size, size, generator=torch.Generator().manual_seed(args.seed))
    if args.eval:
        model.eval()
    tensors = sum(1 for p in model.parameters() if p.requires_grad) + 1
    samples = None if args.all else args.samples or min(64, max(4, 2048 // tensors))
    result = gradcheck(model, x, eps=args.eps, threshold=args.threshold, samples=samples,
                       seed=args.seed, verbose=True)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0 if result.passed else 1
    print(f"gradcheck {args.model} ({'eval' if args.eval else 'training'} mode): input "
          f"{tuple(x.shape)} in float64, centred differences with eps {args.eps:g}, "
          f"{'every entry' if samples is None else f'up to {samples} entries per tensor'}")
    rows = [[t.name, "x".join(map(str, t.shape)) or "scalar", t.checked, t.kinks,
             "zero gradient" if t.zero else f"{t.rel_error:.2e}", f"{t.max_abs_error:.1e}",
             "ok" if t.passed else "FAIL"] for t in result.tensors]
    print(render_table(["tensor", "shape", "checked", "kinks", "rel. error", "max abs error",
                        "result"], rows, right=[False, False, True, True, True, True, False]))
    worst = sorted(((t, w) for t in result.tensors if not t.zero for w in t.worst),
                   key=lambda tw: -abs(tw[1]["analytic"] - tw[1]["numeric"]))[:args.worst]
    print("\nworst entries:")
    print(render_table(["tensor", "index", "analytic", "numeric", "rel. error", "kink"],
                       [[t.name, _format_index(w["index"]), f"{w['analytic']:.9g}",
                         f"{w['numeric']:.9g}", f"{w['rel_error']:.2e}", "yes" if w["kink"] else ""]
                        for t, w in worst], right=[False, False, True, True, True, False]))
    if result.kink_layers:
        print(f"\nnote: {_some(result.kink_layers)} have kinks; "
              f"{result.kinks} checked entries moved an input across one and were left out, "
              f"since a finite difference across a kink is meaningless there")
    zero = [t.name for t in result.tensors if t.zero]
    if zero:
        print(f"note: zero gradient (only rounding noise to compare) for {_some(zero)} "
              f"(a bias right before BatchNorm is cancelled by it; a unit can be dead)")
    verdict = "PASSED" if result.passed else "FAILED"
    print(f"\n{verdict}: largest relative error {result.max_rel_error:.2e} "
          f"(threshold {result.threshold:g})")
    if not result.passed:
        print("a failed check means some backward pass (a custom autograd Function, a "
              "hand-written layer) computes the wrong gradient for the tensors marked FAIL")
        if not args.eval and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                 for m in model.modules()):
            print("but here BatchNorm in training mode normalises over few values per channel "
                  "(batch x height x width of its input), which makes the loss too curved for "
                  "a finite difference of this step: rerun with --eval, or a larger --batch or "
                  "--input-size, to tell the two apart")
    return 0 if result.passed else 1


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """DATA --model M and how the images are read (lr-find, overfit)."""
    p.add_argument("dataset", help=DATA_HELP)
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert images to 1 or 3 channels")
    p.add_argument("--image-size", type=int, help="resize images to this many pixels square")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")


def register(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser("lr-find", help="learning-rate range test: plot loss against lr and suggest one",
                       description="Train for --steps mini-batches while the learning rate grows "
                       "exponentially from --start-lr to --end-lr; plot the loss against it and "
                       "suggest the rate where the loss falls fastest, before it diverges.")
    _add_data_options(p)
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default 10)")
    p.add_argument("--steps", type=int, default=100, help="mini-batches in the test (default 100)")
    p.add_argument("--out", help="PNG plot (default runs/lr-find-MODEL-DATASET.png)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per step (default {d.batch_size})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help=f"optimizer to find a rate for (default {d.optimizer})")
    p.add_argument("--momentum", type=float, default=d.momentum, help="momentum for momentum/nesterov")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay (default 0)")
    p.add_argument("--loss", choices=LOSSES, default=d.loss, help=f"loss criterion (default {d.loss})")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="auto | fp32 | bf16, as for train: the rate found is for the precision "
                        "you will train in (default auto)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=cmd_lr_find)

    p = sub.add_parser("overfit", help="sanity check: can the model reach 100%% on a few images?",
                       description="The lecture's sanity check: train on the first N images "
                       "(taken in turn from each class) with plain SGD, no weight decay and no "
                       "dropout until all are classified right. Exit code 1 when it fails.")
    _add_data_options(p)
    p.add_argument("-n", type=int, default=20, help="images to memorise (default 20)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    p.add_argument("--max-epochs", type=int, default=300, help="give up after this many (default 300)")
    p.set_defaults(run=cmd_overfit)

    p = sub.add_parser("gradcheck", help="check a model's gradients against finite differences",
                       description="Compare autograd's gradients with centred finite differences "
                       "in float64 on a small random input, per parameter tensor (and the input). "
                       "From Python, convlab.gradcheck(module, input) checks any nn.Module. Exit "
                       "code 1 when the check fails.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--input-size", type=int, help="input height = width (default: small for the model)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="input channels (default: the model's)")
    p.add_argument("--classes", type=int, default=3, help="classes of the model (default 3)")
    p.add_argument("--batch", type=int, default=2, help="images in the input (default 2)")
    p.add_argument("--samples", type=int,
                   help="entries checked per tensor (default 64, fewer for models with many tensors)")
    p.add_argument("--all", action="store_true", help="check every entry (slow for big models)")
    p.add_argument("--eps", type=float, default=1e-6, help="finite-difference step (default 1e-6)")
    p.add_argument("--threshold", type=float, default=1e-6,
                   help="largest relative error that passes (default 1e-6)")
    p.add_argument("--worst", type=int, default=5, help="worst entries to list (default 5)")
    p.add_argument("--eval", action="store_true",
                   help="check in eval mode (BatchNorm uses running statistics, no dropout)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights, input and samples")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(run=cmd_gradcheck)
