"""One epoch of mnist_cnn on Fashion-MNIST, batch 100, SGD: convlab's fit against the
lecture's plain loop (torchvision FashionMNIST + ToTensor + DataLoader), in one process.

Prints one JSON line: both times, the speed-up ratio and both test accuracies.
Run: .venv/bin/python bench/train_speed.py [--epochs N]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import convlab
from convlab._runtime import tune_malloc
from convlab.config import TrainConfig
from convlab.data import load_dataset
from convlab.models import create_model, default_preprocess
from convlab.train import evaluate, fit

FMNIST = Path("/usr/share/datasets/fashion-mnist")
LR, MOMENTUM, BATCH = 0.01, 0.9, 100


def plain_loop(root: Path, epochs: int, seed: int) -> tuple[float, float, float]:
    """The lecture's recipe, as written there: Dataset + ToTensor + DataLoader + loop."""
    import torchvision
    from torchvision import transforms

    torch.manual_seed(seed)
    trainset = torchvision.datasets.FashionMNIST(root=str(root), train=True, download=False,
                                                 transform=transforms.ToTensor())
    testset = torchvision.datasets.FashionMNIST(root=str(root), train=False, download=False,
                                                transform=transforms.ToTensor())
    trainloader = torch.utils.data.DataLoader(dataset=trainset, batch_size=BATCH, shuffle=True)
    testloader = torch.utils.data.DataLoader(dataset=testset, batch_size=BATCH, shuffle=False)
    model = create_model("mnist_cnn", 10, 1)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    tune_malloc(False)  # the reference runs as it would without convlab: glibc's defaults
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        model.train()
        for images, labels in trainloader:
            outputs = model(images)
            optimizer.zero_grad()
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    tune_malloc(True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in testloader:
            correct += int((model(images).argmax(1) == labels).sum())
    return seconds, cpu, correct / len(testset)


def convlab_fit(epochs: int, seed: int) -> tuple[float, float, float]:
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    pre, _ = default_preprocess("mnist_cnn", 1, 28)
    torch.manual_seed(seed)
    model = create_model("mnist_cnn", 10, 1)
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, lr=LR, optimizer="momentum",
                      schedule="constant", momentum=MOMENTUM, val_split=0.0, seed=seed)
    t0, c0 = time.perf_counter(), time.process_time()
    fit(model, train, None, config=cfg, preprocess=pre, verbose=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, cpu, evaluate(model, test, pre).top1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for f in FMNIST.glob("*.gz"):  # torchvision wants the decompressed IDX files
            with gzip.open(f) as src, open(raw / f.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        ref_s, ref_cpu, ref_acc = plain_loop(Path(tmp), args.epochs, args.seed)
    ours_s, ours_cpu, ours_acc = convlab_fit(args.epochs, args.seed)
    print(json.dumps({
        "bench": "train_speed", "model": "mnist_cnn", "dataset": "fashion-mnist",
        "epochs": args.epochs, "batch_size": BATCH, "optimizer": f"SGD momentum {MOMENTUM} lr {LR}",
        "torch_threads": torch.get_num_threads(), "convlab_version": convlab.__version__,
        "plain_loop_s": round(ref_s, 2), "convlab_s": round(ours_s, 2),
        "speedup": round(ref_s / ours_s, 2),
        "plain_loop_cpu_s": round(ref_cpu, 2), "convlab_cpu_s": round(ours_cpu, 2),
        "cpu_time_ratio": round(ref_cpu / ours_cpu, 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "plain_loop_test_acc": round(ref_acc, 4), "convlab_test_acc": round(ours_acc, 4),
        "acc_diff_points": round(100 * (ours_acc - ref_acc), 2),
    }))


if __name__ == "__main__":
    main()
