"""One epoch of mnist_cnn on Fashion-MNIST, batch 100, SGD: convlab's fit against the
lecture's plain loop (torchvision FashionMNIST + ToTensor + DataLoader).

Each way runs in a fresh Python process, as a user would run either (the plain loop
with glibc's default malloc, since it does not import convlab's start-up tuning), and
the two alternate --repeats times. Both start from the same initial weights and see
the same batches in the same order (the DataLoader's random sampler has a generator
seeded like convlab's epoch permutation), so their test accuracies differ only by float
rounding, not by luck. Prints one JSON line: median times, the speed-up ratio and both
test accuracies.

With --baseline DIR (a checkout of another convlab, e.g. `git worktree add /tmp/old
main`), convlab's fit from DIR/src is timed too, alternating with this tree's in the
same run, and the line gains each precision's before/after times and ratios. bf16 runs
only on a CPU with native bfloat16; elsewhere its figures are left out and the line
says why.
--images N trains on the first N images only and --threads N fixes OMP_NUM_THREADS, for
quicker and steadier comparisons on a busy machine.
Run: .venv/bin/python bench/train_speed.py [--epochs N] [--repeats R] [--baseline DIR]
     [--no-plain] [--images N] [--threads N]
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


def plain_loop(root: Path, epochs: int, seed: int, images: int | None = None
               ) -> tuple[float, float, float]:
    """The lecture's recipe, as written there: Dataset + ToTensor + DataLoader + loop."""
    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms

    from convlab.data.batches import epoch_seed
    from convlab.models import create_model

    trainset = torchvision.datasets.FashionMNIST(root=str(root), train=True, download=False,
                                                 transform=transforms.ToTensor())
    if images is not None:  # the first `images`, as convlab's ImageSet.head takes them
        trainset = torch.utils.data.Subset(trainset, range(min(images, len(trainset))))
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


def convlab_fit(epochs: int, seed: int, precision: str, images: int | None = None
                ) -> tuple[float, float, float]:
    import torch

    from convlab.config import TrainConfig
    from convlab.data import load_dataset
    from convlab.models import create_model, default_preprocess
    try:
        from convlab.training import evaluate, fit
    except ImportError:  # a --baseline from before the package was named convlab.training
        from convlab.train import evaluate, fit

    train = load_dataset("fashion-mnist", "train")
    if images is not None:
        train = train.head(images)
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


def one_way(way: str, epochs: int, seed: int, baseline: Path | None = None,
            images: int | None = None, threads: int | None = None) -> dict:
    """Run one way in a fresh process; its figures as a dict. A way named before-* runs
    convlab-* with the convlab found in `baseline`/src."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if way == "plain":  # the lecture's loop runs with glibc's malloc defaults
        env["CONVLAB_NO_MALLOC_TUNING"] = "1"
    if way.startswith("before-"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(baseline / "src"),
                                                          env.get("PYTHONPATH")]))
        way = way.replace("before-", "convlab-")
    out = subprocess.run([sys.executable, __file__, "--way", way, "--epochs", str(epochs),
                          "--seed", str(seed)] + ([] if images is None else ["--images", str(images)]),
                         env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1, help="epochs for both ways (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    ap.add_argument("--images", type=int, metavar="N",
                    help="train on the first N training images only (quicker comparisons)")
    ap.add_argument("--threads", type=int, metavar="N",
                    help="OMP_NUM_THREADS for every run (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="fresh-process runs of each way, alternating (default 3)")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="also time the convlab in DIR/src (a checkout of main, say), alternating")
    ap.add_argument("--no-plain", action="store_true", help="leave out the lecture's plain loop")
    ap.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline is not None and not (args.baseline / "src" / "convlab").is_dir():
        ap.error(f"--baseline {args.baseline}: no src/convlab there; give a convlab checkout")
    if args.way == "plain":
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True)
            for f in FMNIST.glob("*.gz"):  # torchvision wants the decompressed IDX files
                with gzip.open(f) as src, open(raw / f.stem, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            s, cpu, acc = plain_loop(Path(tmp), args.epochs, args.seed, args.images)
    elif args.way:
        s, cpu, acc = convlab_fit(args.epochs, args.seed, args.way.split("-")[1], args.images)
    if args.way:
        import torch

        import convlab
        print(json.dumps({"s": s, "cpu": cpu, "acc": acc, "threads": torch.get_num_threads(),
                          "convlab": str(Path(convlab.__file__).parent)}))
        return
    from convlab._runtime import cpu_has_bf16

    tags = ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]
    ways = ([] if args.no_plain else ["plain"]) + [
        w for tag in tags for w in ((f"before-{tag}",) if args.baseline else ()) + (f"convlab-{tag}",)]
    runs: dict[str, list[dict]] = {way: [] for way in ways}
    for _ in range(args.repeats):
        for way in ways:
            runs[way].append(one_way(way, args.epochs, args.seed, args.baseline, args.images,
                                     args.threads))
    import convlab

    def med(way: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[way])

    line = {
        "bench": "train_speed", "model": "mnist_cnn", "dataset": "fashion-mnist",
        "epochs": args.epochs, "batch_size": BATCH, "optimizer": f"SGD momentum {MOMENTUM} lr {LR}",
        "torch_threads": runs[ways[0]][0]["threads"], "convlab_version": convlab.__version__,
        "repeats": args.repeats, "train_images": args.images or 60_000,
    }
    if "plain" in runs:
        line["plain_loop_s"] = round(med("plain", "s"), 2)
    for tag in tags:
        way = f"convlab-{tag}"
        line[f"convlab_{tag}_s"] = round(med(way, "s"), 2)
        if "plain" in runs:
            line[f"speedup_{tag}"] = round(med("plain", "s") / med(way, "s"), 2)
            # each repeat's own ratio: its two runs were next to each other in time, so a
            # drift of the machine's speed between repeats cancels out of it
            line[f"speedup_{tag}_per_repeat"] = [
                round(p["s"] / r["s"], 2) for p, r in zip(runs["plain"], runs[way])]
            line[f"cpu_time_ratio_{tag}"] = round(med("plain", "cpu") / med(way, "cpu"), 2)
        if args.baseline:
            before = f"before-{tag}"
            line[f"baseline_{tag}_s"] = round(med(before, "s"), 2)
            # > 1: this tree is faster than the baseline; per repeat, the two runs adjacent
            line[f"baseline_over_this_{tag}"] = round(med(before, "s") / med(way, "s"), 3)
            line[f"baseline_over_this_{tag}_per_repeat"] = [
                round(b["s"] / r["s"], 3) for b, r in zip(runs[before], runs[way])]
            line[f"baseline_{tag}_runs_s"] = [round(r["s"], 2) for r in runs[before]]
            line[f"convlab_{tag}_runs_s"] = [round(r["s"], 2) for r in runs[way]]
            line[f"baseline_over_this_{tag}_cpu"] = round(med(before, "cpu") / med(way, "cpu"), 3)
    if "bf16" not in tags:
        line["bf16"] = "not run: this CPU has no native bfloat16 (AVX512-BF16 or AMX)"
    if args.baseline:
        line["baseline"] = runs[f"before-{tags[0]}"][0]["convlab"]
        line["this"] = runs[f"convlab-{tags[0]}"][0]["convlab"]
    line["load_avg_1min"] = round(os.getloadavg()[0], 2)
    if "plain" in runs:
        line["plain_loop_test_acc"] = round(runs["plain"][0]["acc"], 4)
    for tag in tags:
        acc = runs[f"convlab-{tag}"][0]["acc"]
        line[f"convlab_{tag}_test_acc"] = round(acc, 4)
        if "plain" in runs:
            line[f"acc_diff_{tag}_points"] = round(100 * (acc - runs["plain"][0]["acc"]), 2)
        if args.baseline:
            line[f"baseline_{tag}_test_acc"] = round(runs[f"before-{tag}"][0]["acc"], 4)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
