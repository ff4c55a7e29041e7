"""`convlab demo` (what `make demo` runs): the main jobs on the embedded default data.

Each step is a function in DEMO_STEPS taking the output folder; later features add
their own step to the list.
"""
from __future__ import annotations

import time
from pathlib import Path

__all__ = ["run_demo", "DEMO_STEPS"]


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def step_train(out: Path) -> None:
    """Train mnist_cnn on Fashion-MNIST for 2 epochs, then predict a few test images."""
    from PIL import Image

    from ..config import TrainConfig
    from ..data import load_dataset
    from ..predict import Predictor
    from ..train import train

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


DEMO_STEPS = [step_train]


def run_demo(out: Path) -> int:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for step in DEMO_STEPS:
        step(out)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s; outputs in {out}")
    return 0
