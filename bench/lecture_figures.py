"""The lecture's figures for mnist1/mnist2/mnist3, reproduced on real data here.

The lecture reports training accuracy on MNIST of about 89% (mnist1, linear), 91%
(mnist2, 20 hidden units) and 98.3-98.5% (mnist3, one conv layer). This trains each
model on mnist-5k (the real 5,000-digit MNIST subset, 20% held out) and on
Fashion-MNIST (official test set) and prints one JSON line: training, validation and
test accuracy per model and dataset, and the ratio of our training accuracy to the
lecture's on the MNIST digits.
Run: .venv/bin/python bench/lecture_figures.py [--epochs N]
"""
from __future__ import annotations

import argparse
import json
import time

from convlab.config import TrainConfig
from convlab.training import train

LECTURE_TRAIN_ACC = {"mnist_linear": 0.89, "mnist_mlp": 0.91, "mnist_cnn": 0.985}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    out: dict = {"bench": "lecture_figures", "epochs": args.epochs, "results": {}}
    t0 = time.perf_counter()
    for dataset, val_split in (("mnist-5k", 0.2), ("fashion-mnist", 0.1)):
        for model in LECTURE_TRAIN_ACC:
            cfg = TrainConfig(epochs=args.epochs, val_split=val_split)
            r = train(dataset, model, cfg, verbose=False)
            row = {"train_acc": round(r.history[-1].acc, 4), "val_acc": round(r.history[-1].val_acc, 4)}
            if r.test is not None:
                row["test_acc"] = round(r.test.top1, 4)
            if dataset == "mnist-5k":
                row["train_acc_vs_lecture"] = round(r.history[-1].acc / LECTURE_TRAIN_ACC[model], 3)
            out["results"][f"{dataset}/{model}"] = row
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
