"""`convlab demo` (what `make demo` runs): the main jobs on the embedded default data.

Each step is a function in DEMO_STEPS taking the output folder; later features add
their own step to the list.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["register", "run_demo", "DEMO_STEPS"]


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def step_train(out: Path) -> None:
    """Train mnist_cnn on Fashion-MNIST for 2 epochs, then predict a few test images."""
    from PIL import Image

    from ..config import TrainConfig
    from ..data import load_dataset
    from ..predict import Predictor
    from ..training import train

    _banner("train mnist_cnn (the lecture's mnist3) on Fashion-MNIST, 2 epochs")
    run_dir = out / "mnist_cnn-fashion-mnist"
    result = train("fashion-mnist", "mnist_cnn", TrainConfig(epochs=2), out=run_dir, overwrite=True)
    print(f"test: top-1 accuracy {result.test.top1:.4f}, top-5 accuracy {result.test.top5:.4f} "
          f"({result.test.n:,} images); run saved in {run_dir}")

    _banner("predict five test images from PNG files with the saved run")
    test = load_dataset("fashion-mnist", "test")
    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(5):
        label = test.classes[int(test.labels[i])].replace("/", "-").replace(" ", "_")
        path = samples / f"test{i}-{label}.png"
        Image.fromarray(test.images[i, 0].numpy(), mode="L").save(path)
        paths.append(path)
    for p in Predictor(run_dir).predict_files(paths, top=2):
        print(p)


def step_inspect(out: Path) -> None:
    """Where AlexNet's units, connections and weights are; the demo run's learned kernels."""
    from ..analysis import model_stats
    from ..figures.learned import save_kernels
    from ..checkpoint import load_run
    from ..tables import render_table
    from .inspect import share_table

    _banner("convlab inspect alexnet: where are the units, connections and weights?")
    stats = model_stats("alexnet")
    t = stats.totals()
    print(f"parameters {t['params']:,}; units {t['units']:,}; connections {t['connections']:,}; "
          f"MACs {t['macs']:,} (FLOPs = 2 x MACs)")
    print(render_table(*share_table(stats), right=[False] + [True] * 5))
    run = load_run(out / "mnist_cnn-fashion-mnist")
    path = save_kernels(run.model, out / "mnist_cnn-kernels.png", label="mnist_cnn (demo run)")
    print(f"the 32 learned 5x5 kernels of mnist_cnn: {path}")


def step_transfer(out: Path) -> None:
    """ImageNet top-5 for the coffee photo, then features+linear transfer on 20 images per class."""
    import skimage.data
    import torch
    from PIL import Image

    from ..config import TrainConfig
    from ..predict import Predictor, classify_images
    from ..transfer import TransferConfig, transfer

    _banner("convlab classify coffee.png (bundled EfficientNet-Lite0, ImageNet, offline)")
    photo = out / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(photo)
    image = torch.from_numpy(skimage.data.coffee()).permute(2, 0, 1).contiguous()
    for rank, (name, p) in enumerate(classify_images([image], top=5)[0], 1):
        print(f"{rank}. {name} {p:.3f}")

    _banner("transfer: frozen EfficientNet-Lite0 features + linear head, Fashion-MNIST 20 per class")
    run_dir = out / "features-fashion-mnist-20shot"
    r = transfer("fashion-mnist", TransferConfig(strategy="features", head="linear"),
                 TrainConfig(val_split=0.25), out=run_dir, overwrite=True, few_shot=20)
    print(f"validation accuracy {r.val_acc:.4f} with 15 training images per class; run saved in {run_dir}")
    samples = sorted((out / "samples").glob("*.png"))[:3]
    if samples:
        for p in Predictor(run_dir).predict_files(samples, top=2):
            print(p)


DEMO_STEPS = [step_train, step_inspect, step_transfer]


def run_demo(out: Path) -> int:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for step in DEMO_STEPS:
        step(out)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; outputs in {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.out))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on the bundled data (what `make demo` runs)")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its runs")
    p.set_defaults(run=cmd_demo)
