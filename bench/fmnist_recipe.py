"""The fmnist-94 recipe on the official Fashion-MNIST test set, over several seeds, against
a reference measured in the same run: the default `convlab train fashion-mnist --model
mnist_cnn` (2 epochs).

Prints one JSON line: per-seed test accuracy and wall time, their mean and standard
deviation, the target (94.0% mean, each run under 600 s) and the ratios to the reference.
Run: .venv/bin/python bench/fmnist_recipe.py [--seeds 3] [--epochs N] [--no-reference]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from convlab.config import TrainConfig
from convlab.recipes import recipe
from convlab.training import train

TARGET_ACC, TARGET_SECONDS = 0.94, 600.0


def run(model: str, config: TrainConfig) -> tuple[float, float, float]:
    """(test top-1, wall seconds, CPU seconds) of one training run, test evaluation included."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = train("fashion-mnist", model, config, device="cpu", verbose=False)
    return result.test.top1, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="fmnist-94", help="recipe to measure (default fmnist-94)")
    ap.add_argument("--seeds", type=int, default=3, help="runs, seeds 0..N-1 (default 3)")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (quick checks)")
    ap.add_argument("--no-reference", action="store_true", help="skip the mnist_cnn reference run")
    args = ap.parse_args()

    r = recipe(args.recipe)
    cfg = r.config if args.epochs is None else r.config.replace(epochs=args.epochs)
    accs, walls, cpus = [], [], []
    for seed in range(args.seeds):
        acc, wall, cpu = run(r.model, cfg.replace(seed=seed))
        accs.append(acc), walls.append(wall), cpus.append(cpu)
    out = {
        "bench": "fmnist_recipe", "recipe": r.name, "model": r.model, "epochs": cfg.epochs,
        "seeds": args.seeds, "test_acc": [round(a, 4) for a in accs],
        "mean_acc": round(statistics.mean(accs), 4),
        "std_acc": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
        "wall_s": [round(w, 1) for w in walls], "mean_wall_s": round(statistics.mean(walls), 1),
        "cpu_s": [round(c, 1) for c in cpus],
        "target": {"mean_acc": TARGET_ACC, "max_wall_s": TARGET_SECONDS,
                   "met": statistics.mean(accs) >= TARGET_ACC and max(walls) < TARGET_SECONDS},
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if not args.no_reference:
        ref_acc, ref_wall, _ = run("mnist_cnn", TrainConfig())
        out["reference"] = {"what": "mnist_cnn, TrainConfig() defaults (2 epochs)",
                            "test_acc": round(ref_acc, 4), "wall_s": round(ref_wall, 1)}
        out["acc_gain_vs_reference"] = round(statistics.mean(accs) - ref_acc, 4)
        out["wall_ratio_vs_reference"] = round(statistics.mean(walls) / ref_wall, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
