"""`convlab backbones`: the offline pretrained backbones in one table, and the decks'
comparison chart (accuracy against operations, bubble area = parameters)."""
from __future__ import annotations

import argparse

from ..tables import FORMATS, render_table

__all__ = ["register"]


def _pct(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def cmd_backbones(args: argparse.Namespace) -> int:
    from ..analysis.backbones import backbone_rows, published_rows
    from ..embed import images_per_second

    def speed(name: str) -> float:
        return images_per_second(name, batch_size=args.batch_size, batches=args.batches)
    rows = backbone_rows(speed=None if args.no_speed else speed)
    headers = ["backbone", "input", "parameters", "MACs", "top-1 %", "top-5 %", "images/s",
               "embedding"]
    table = [[r.name, f"3x{r.input_size}x{r.input_size}", r.params, r.macs, _pct(r.top1),
              _pct(r.top5), None if r.images_per_second is None else round(r.images_per_second, 1),
              r.dim] for r in rows]
    if args.format != "table":
        headers.append("top-1/top-5 source")
        for line, r in zip(table, rows):
            line.append(r.source)
    print(render_table(headers, table, args.format))
    if args.format == "table":
        print("\nImageNet-1K top-1/top-5 of each backbone's weights, as published:")
        for r in rows:
            print(f"  {r.name}: {r.source}")
        import os

        speed = ("not measured (--no-speed)" if args.no_speed else
                 f"measured here through the embedding path (uint8 in, preprocessing, features "
                 f"out), batch {args.batch_size}, load average {os.getloadavg()[0]:.1f}")
        print(f"MACs per image at the input shown (FLOPs = 2 x MACs); images/s {speed}")
        print("use one: convlab classify --model NAME IMAGE, convlab transfer DATA --backbone NAME")
    if args.plot:
        from ..figures.comparison import plot_comparison

        print(f"wrote {plot_comparison(rows, args.plot, reference=published_rows())}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backbones", help="the offline pretrained backbones: parameters, MACs, ImageNet "
        "accuracy, speed here, embedding size",
        description="One row per pretrained backbone whose ImageNet weights load offline: "
        "parameters and MACs (counted by convlab inspect's code at the backbone's input "
        "size), ImageNet-1K top-1/top-5 as published for its weights (the source is named), "
        "images per second measured on this machine, and the embedding size that embed, "
        "transfer --strategy features and teach use. --plot draws the comparison chart: "
        "top-1 against operations, bubble area = parameters, with the published figures of "
        "torchvision's AlexNet, VGG16, GoogLeNet, ResNet50, DenseNet121, SqueezeNet 1.0 and "
        "EfficientNet-B0 in grey.")
    p.add_argument("--plot", metavar="PNG", help="also draw the comparison chart to this file")
    p.add_argument("--no-speed", action="store_true", help="skip measuring images per second")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per timed batch (default 16)")
    p.add_argument("--batches", type=int, default=2,
                   help="timed batches per backbone, after one warm-up (default 2)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.set_defaults(run=cmd_backbones)
