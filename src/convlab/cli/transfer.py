"""Pretrained ImageNet backbones: classify, embed, transfer (features, finetune, full,
scratch, compare), each with any registered backbone (--model / --backbone)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import HEAD_KINDS, STRATEGIES, TransferConfig
from ..tables import render_table
from .options import DATA_HELP, add_train_options, train_config_from_args

__all__ = ["register"]


def cmd_classify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data import decode_image
    from ..errors import ConfigError
    from ..predict import classify_images

    if (Path(args.model) / "meta.json").is_file():  # a run directory, not a model name
        from ..checkpoint import read_meta
        task = read_meta(args.model).get("task", "classification")
        how = (f"convlab detect IMAGE --model {args.model}" if task == "detection"
               else f"convlab predict {args.model} IMAGE")
        raise ConfigError(f"classify takes a pretrained ImageNet model by name; {args.model} is "
                          f"a {task} run: use {how}")
    images = [decode_image(p, 3) for p in args.images]
    for path, top in zip(args.images, classify_images(images, args.model, top=args.top,
                                                      weights=args.weights)):
        print(f"{path}:")
        print(render_table(["rank", "ImageNet class", "probability"],
                           [[i + 1, name, round(p, 4)] for i, (name, p) in enumerate(top)]))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from ..data import load_dataset, list_datasets
    from ..embed import Embedder
    from ..training import is_main, resolve_device

    name = args.dataset
    data = load_dataset(name, args.split, size=None if name in list_datasets() else args.image_size or 224)
    if args.limit:
        data = data.head(args.limit)
    embedder = Embedder(args.backbone, layer=args.layer, weights=args.weights,
                        device=resolve_device(args.device),
                        cache=not args.no_cache, image_size=args.image_size)
    emb = embedder.embed(data.images, batch_size=args.batch_size)
    s = embedder.stats
    out = Path(args.out) if args.out else Path("runs") / (
        f"embeddings-{Path(name).name}-{args.split}-{args.backbone}"
        + (f"-{args.layer}" if args.layer else "") + ".safetensors")
    if is_main():  # under torchrun every rank embedded a share; rank 0 writes the whole
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        save_file({"embeddings": emb, "labels": data.labels}, str(tmp),
                  metadata={"classes": json.dumps(data.classes), "backbone": args.backbone,
                            "layer": args.layer or "", "cache_key": embedder.key})
        tmp.replace(out)
    rate = s.computed / s.seconds if s.computed and s.seconds else float("nan")
    print(f"{s.images:,} images -> embeddings {tuple(emb.shape)} from {args.backbone}"
          f"{' layer ' + args.layer if args.layer else ''}: {s.computed:,} computed"
          + (f" ({rate:.1f} images/s)" if s.computed else "")
          + f", {s.cached:,} from the cache, {s.seconds:.1f}s")
    print(f"saved {out} (tensors 'embeddings' and 'labels'; classes in its metadata)")
    return 0


def _transfer_config(args: argparse.Namespace, strategy: str):
    return TransferConfig(strategy=strategy, backbone=args.backbone, weights=args.weights,
                          layer=args.layer, image_size=args.image_size, head=args.head, k=args.k,
                          hidden=tuple(args.hidden), dropout=args.head_dropout, svm_c=args.svm_c,
                          l2=args.l2, unfreeze=args.unfreeze, backbone_lr=args.backbone_lr)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def cmd_transfer(args: argparse.Namespace) -> int:
    from ..training import resolve_device
    from ..transfer import compare, transfer

    cfg = train_config_from_args(args)
    device = resolve_device(args.device)
    stem = Path(args.dataset).name
    if args.strategy == "compare":
        out = Path(args.out) if args.out else Path("runs") / f"compare-{stem}"
        strategies = args.strategies.split(",") if args.strategies else None
        kw = {"strategies": strategies} if strategies else {}
        result = compare(args.dataset, _transfer_config(args, "features"), cfg, out=out,
                         overwrite=args.overwrite, device=device, evaluate_test=args.test,
                         few_shot=args.few_shot, **kw)
        headers = ["strategy", "val acc", "train s", "infer ms/img", "run"]
        rows = result.rows()
        if args.test:
            headers.insert(2, "test acc")
            for row, r in zip(rows, result.results):
                row.insert(2, None if r.test_acc is None else round(r.test_acc, 4))
        print()
        print(render_table(headers, rows))
        a = result.advice
        print(f"\nyour case: {a['data']} data ({a['images_per_class']:g} training images per class), "
              f"frozen features separate the classes to {_fmt(a['frozen_feature_acc'])} "
              f"(chance {a['chance']:.2f}) -> {'similar to' if a['similar'] else 'different from'} "
              f"ImageNet")
        print(f"the lecture's advice: {a['text']} (suggests: {a['suggested']})")
        print(f"won here: {result.winner}; table in {out / 'compare.json'}")
        return 0
    out = Path(args.out) if args.out else Path("runs") / f"{args.strategy}-{args.backbone}-{stem}"
    r = transfer(args.dataset, _transfer_config(args, args.strategy), cfg, out=out,
                 overwrite=args.overwrite, device=device, evaluate_test=args.test,
                 few_shot=args.few_shot)
    print(f"{r.strategy}: val acc {_fmt(r.val_acc)}"
          + (f", test acc {_fmt(r.test_acc)}" if r.test_acc is not None else "")
          + f", trained in {r.train_seconds:.1f}s, inference {r.infer_ms:.1f} ms/image")
    print(f"run saved in {out}; use it: convlab predict {out} IMAGE...")
    return 0


def _backbone_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="pretrained backbone (default efficientnet_lite0); the ones whose weights "
                   "load offline are listed by: convlab backbones")
    p.add_argument("--weights", help="a torchvision/timm state-dict file for the backbone instead "
                   "of the bundled weights")
    p.add_argument("--layer", help="take this layer's output (average-pooled) instead of the last "
                   "hidden layer, e.g. blocks.5")
    p.add_argument("--image-size", type=int, help="input size instead of the backbone's "
                   "published one (224 for efficientnet_lite0; smaller is faster and coarser)")


def register(sub: argparse._SubParsersAction) -> None:
    d = TransferConfig()
    p = sub.add_parser("classify", help="top-5 ImageNet labels of photos with a pretrained model",
                       description="Classify image files with a pretrained ImageNet model, "
                       "offline for the backbones that `convlab backbones` lists (EfficientNet-"
                       "Lite0/1/2, MobileNetV2: the lecture's Cozmo demo); class names from "
                       "torchvision's weights metadata.")
    p.add_argument("images", nargs="+", help="image files (any mode and size)")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="registered model (default efficientnet_lite0; e.g. mobilenet_v2)")
    p.add_argument("--weights", help="a torchvision/timm state-dict file for --model")
    p.add_argument("--top", type=int, default=5, help="labels per image (default 5)")
    p.set_defaults(run=cmd_classify)

    p = sub.add_parser("embed", help="feature vectors of a dataset from a pretrained backbone (cached)",
                       description="Embed a dataset's images with a frozen pretrained backbone: the "
                       "last hidden layer (or --layer) as vectors, batched, cached on disk by image "
                       "content, so a second run computes nothing.")
    p.add_argument("dataset", help=DATA_HELP)
    _backbone_options(p)
    p.add_argument("--split", default="train", choices=("train", "test"), help="split (default train)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--out", help="output .safetensors (default runs/embeddings-DATA-SPLIT-BACKBONE.safetensors)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embeddings cache")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine (torchrun); each embeds a share (default 1)")
    p.set_defaults(run=cmd_embed, torchrun=True)

    p = sub.add_parser("transfer", help="transfer learning: features, finetune, full, scratch, compare",
                       description="Train a classifier for your classes from a pretrained ImageNet "
                       "backbone. features: frozen backbone + a head on cached embeddings; finetune: "
                       "new classifier, last --unfreeze blocks trained at a lower rate, frozen "
                       "BatchNorm in eval mode; full: all layers from the pretrained start; scratch: "
                       "random weights (baseline); compare: all four on one split, with advice.")
    p.add_argument("dataset", help=DATA_HELP)
    p.add_argument("--strategy", required=True, choices=(*STRATEGIES, "compare"), help="what to train")
    p.add_argument("--strategies", help="compare only these, comma-separated (default all four)")
    _backbone_options(p)
    g = p.add_argument_group("features head")
    g.add_argument("--head", choices=HEAD_KINDS, default=d.head, help=f"head on the embeddings (default {d.head})")
    g.add_argument("--k", type=int, default=d.k, help=f"knn: neighbours (default {d.k})")
    g.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden),
                   help="mlp: units of one or two hidden layers (default 256)")
    g.add_argument("--head-dropout", dest="head_dropout", type=float, default=d.dropout,
                   help=f"mlp: dropout after each hidden layer (default {d.dropout})")
    g.add_argument("--svm-c", type=float, default=d.svm_c, help=f"svm: C (default {d.svm_c})")
    g.add_argument("--l2", type=float, default=d.l2, help=f"linear/mlp: L2 penalty (default {d.l2})")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--unfreeze", type=int, default=d.unfreeze,
                   help=f"finetune: last blocks trained besides the classifier (default {d.unfreeze})")
    g.add_argument("--backbone-lr", type=float, default=d.backbone_lr,
                   help=f"finetune/full: backbone learning rate as a fraction of --lr (default {d.backbone_lr})")
    p.add_argument("--few-shot", type=int, help="keep only K training images per class (before the split)")
    p.add_argument("--test", action="store_true", help="also score the official test split (named datasets)")
    p.add_argument("--out", help="run directory (default runs/STRATEGY-BACKBONE-DATA; compare: runs/compare-DATA)")
    p.add_argument("--overwrite", action="store_true", help="replace existing runs in --out")
    add_train_options(p)
    p.set_defaults(run=cmd_transfer, torchrun=True, batch_size=32, val_split=0.2)
