"""One epoch of mnist_cnn on Fashion-MNIST, batch 100, SGD: convlab's fit against the
lecture's plain loop (torchvision FashionMNIST + ToTensor + DataLoader).

Each way runs in a fresh Python process, as a user would run either (the plain loop
with glibc's default malloc, since it does not import convlab's start-up tuning), and
the two alternate --repeats times. Both start from the same initial weights and see
the same batches in the same order (the DataLoader's random sampler has a generator
seeded like convlab's epoch permutation), so their test accuracies differ only by float
rounding, not by luck. Prints one JSON line: median times, the speed-up ratio and both
test accuracies.
Run: .venv/bin/python bench/train_speed.py [--epochs N] [--repeats R]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FMNIST = Path("/usr/share/datasets/fashion-mnist")
LR, MOMENTUM, BATCH = 0.01, 0.9, 100
WAYS = ("plain", "convlab-fp32", "convlab-bf16")  # the lecture's loop; convlab's fit in float32,
# and with --precision bf16 (bfloat16 autocast; needs AVX512-BF16 or AMX on a CPU)


def plain_loop(root: Path, epochs: int, seed: int) -> tuple[float, float, float]:
    """The lecture's recipe, as written there: Dataset + ToTensor + DataLoader + loop."""
    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms

    from convlab.data.batches import epoch_seed
    from convlab.models import create_model

    trainset = torchvision.datasets.FashionMNIST(root=str(root), train=True, download=False,
                                                 transform=transforms.ToTensor())
    testset = torchvision.datasets.FashionMNIST(root=str(root), train=False, download=False,
                                                transform=transforms.ToTensor())
    testloader = torch.utils.data.DataLoader(dataset=testset, batch_size=BATCH, shuffle=False)
    torch.manual_seed(seed)
    model = create_model("mnist_cnn", 10, 1)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(1, epochs + 1):
        # shuffle=True's own sampler, its generator seeded to draw convlab's order
        order = torch.utils.data.RandomSampler(
            trainset, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        trainloader = torch.utils.data.DataLoader(dataset=trainset, batch_size=BATCH, sampler=order)
        model.train()
        for images, labels in trainloader:
            outputs = model(images)
            optimizer.zero_grad()
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in testloader:
            correct += int((model(images).argmax(1) == labels).sum())
    return seconds, cpu, correct / len(testset)


def convlab_fit(epochs: int, seed: int, precision: str) -> tuple[float, float, float]:
    import torch

    from convlab.config import TrainConfig
    from convlab.data import load_dataset
    from convlab.models import create_model, default_preprocess
    from convlab.train import evaluate, fit

    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    pre, _ = default_preprocess("mnist_cnn", 1, 28)
    torch.manual_seed(seed)
    model = create_model("mnist_cnn", 10, 1)
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, lr=LR, optimizer="momentum",
                      schedule="constant", momentum=MOMENTUM, val_split=0.0, seed=seed,
                      precision=precision)
    # The first optimizer built in a process imports torch._dynamo (1.5 s here). The plain
    # loop builds its optimizer before its clock starts; fit builds its own inside, so
    # that one-off library import is paid here, before the clock, for both ways alike.
    import torch._dynamo  # noqa: F401
    t0, c0 = time.perf_counter(), time.process_time()
    fit(model, train, None, config=cfg, preprocess=pre, verbose=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, cpu, evaluate(model, test, pre).top1


def one_way(way: str, epochs: int, seed: int) -> dict:
    """Run one way in a fresh process; its figures as a dict."""
    env = dict(os.environ)
    if way == "plain":  # the lecture's loop runs with glibc's malloc defaults
        env["CONVLAB_NO_MALLOC_TUNING"] = "1"
    out = subprocess.run([sys.executable, __file__, "--way", way, "--epochs", str(epochs),
                          "--seed", str(seed)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1, help="epochs for both ways (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    ap.add_argument("--repeats", type=int, default=3,
                    help="fresh-process runs of each way, alternating (default 3)")
    ap.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.way == "plain":
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True)
            for f in FMNIST.glob("*.gz"):  # torchvision wants the decompressed IDX files
                with gzip.open(f) as src, open(raw / f.stem, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            s, cpu, acc = plain_loop(Path(tmp), args.epochs, args.seed)
    elif args.way:
        s, cpu, acc = convlab_fit(args.epochs, args.seed, args.way.split("-")[1])
    if args.way:
        import torch
        print(json.dumps({"s": s, "cpu": cpu, "acc": acc, "threads": torch.get_num_threads()}))
        return
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way in WAYS:
            runs[way].append(one_way(way, args.epochs, args.seed))
    import convlab

    def med(way: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[way])

    line = {
        "bench": "train_speed", "model": "mnist_cnn", "dataset": "fashion-mnist",
        "epochs": args.epochs, "batch_size": BATCH, "optimizer": f"SGD momentum {MOMENTUM} lr {LR}",
        "torch_threads": runs["plain"][0]["threads"], "convlab_version": convlab.__version__,
        "repeats": args.repeats, "plain_loop_s": round(med("plain", "s"), 2),
    }
    for way in WAYS[1:]:
        tag = way.split("-")[1]
        line[f"convlab_{tag}_s"] = round(med(way, "s"), 2)
        line[f"speedup_{tag}"] = round(med("plain", "s") / med(way, "s"), 2)
        # each repeat's own ratio: its two runs were next to each other in time, so a
        # drift of the machine's speed between repeats cancels out of it
        line[f"speedup_{tag}_per_repeat"] = [
            round(p["s"] / r["s"], 2) for p, r in zip(runs["plain"], runs[way])]
        line[f"cpu_time_ratio_{tag}"] = round(med("plain", "cpu") / med(way, "cpu"), 2)
    line["load_avg_1min"] = round(os.getloadavg()[0], 2)
    line["plain_loop_test_acc"] = round(runs["plain"][0]["acc"], 4)
    for way in WAYS[1:]:
        tag = way.split("-")[1]
        line[f"convlab_{tag}_test_acc"] = round(runs[way][0]["acc"], 4)
        line[f"acc_diff_{tag}_points"] = round(100 * (runs[way][0]["acc"] - runs["plain"][0]["acc"]), 2)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
