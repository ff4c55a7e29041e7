"""Few-shot Fashion-MNIST: what a pretrained ImageNet backbone buys with 10 and 100
training images per class.

For each shot count k: features+linear and features+knn (frozen bundled
EfficientNet-Lite0, cached embeddings), finetune (new classifier, last 2 blocks
trained, frozen BatchNorm), and the lecture's mnist_cnn trained from scratch (the
reference). Every model is scored on the full official test set (10,000 images); the
test embeddings are cached, so only the first run pays for them. Prints one JSON line
with test accuracies, seconds, and each accuracy as a ratio to mnist_cnn's for the same k.

    .venv/bin/python bench/few_shot.py [--shots 10,100] [--finetune-size 224] [--steps 100]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", default="10,100", help="images per class, comma-separated")
    ap.add_argument("--finetune-size", type=int, default=224,
                    help="input size for finetune (224 = the published preprocessing)")
    ap.add_argument("--steps", type=int, default=100,
                    help="optimizer steps (batch 32) for finetune and scratch, whatever k is")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", help="also draw the accuracies as a bar chart PNG here")
    ap.add_argument("--plot-only", metavar="JSON", help="draw --figure from a saved JSON line; no run")
    args = ap.parse_args()
    if args.plot_only:
        with open(args.plot_only) as f:
            draw(json.loads(f.readline()), args.figure or "few_shot.png")
        return

    import torch

    from convlab.config import TrainConfig
    from convlab.data import load_dataset
    from convlab.embed import Embedder
    from convlab.models import create_model, default_preprocess
    from convlab.training import evaluate, fit
    from convlab.transfer import TransferConfig, fit_head, transfer

    train_all = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    embedder = Embedder("efficientnet_lite0")
    t0 = time.perf_counter()
    test_emb = embedder.embed(test.images, batch_size=100, show_progress=False)
    test_embed_s = time.perf_counter() - t0
    test_cached = embedder.stats.cached
    results: dict[str, dict] = {}
    out = tempfile.mkdtemp(prefix="few_shot-")
    for k in (int(s) for s in args.shots.split(",")):
        train = train_all.few_shot(k, seed=args.seed)
        row: dict[str, dict] = {}
        t = time.perf_counter()
        emb = embedder.embed(train.images, batch_size=100, show_progress=False)
        embed_s = time.perf_counter() - t
        for kind, opts in (("linear", {}), ("knn", {"k": min(5, k)})):
            t = time.perf_counter()
            head = fit_head(kind, emb, train.labels, num_classes=10, seed=args.seed, **opts)
            head_s = time.perf_counter() - t
            acc = float((head.predict_proba(test_emb).argmax(1) == test.labels).float().mean())
            row[f"features+{kind}"] = {"test_acc": round(acc, 4), "head_seconds": round(head_s, 3),
                                       "embed_seconds": round(embed_s, 1)}
        # finetune: the same number of steps for every k, batch 32, Adam 1e-3 (backbone 1e-4)
        epochs = max(1, -(-args.steps * 32 // len(train)))
        t = time.perf_counter()
        r = transfer(train, TransferConfig(strategy="finetune", image_size=args.finetune_size),
                     TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, val_split=0.0,
                                 seed=args.seed), out=os.path.join(out, f"ft{k}"), verbose=False)
        ft_train_s = time.perf_counter() - t
        from convlab.checkpoint import load_run
        run = load_run(r.run_dir)
        ft = evaluate(run.model, test, run.preprocess, batch_size=100, channels_last=True)
        row["finetune"] = {"test_acc": round(ft.top1, 4), "train_seconds": round(ft_train_s, 1),
                           "input_size": args.finetune_size, "epochs": epochs}
        # the reference: the lecture's mnist_cnn from scratch on the same k images per class
        torch.manual_seed(args.seed)
        pre, size = default_preprocess("mnist_cnn", 1, 28)
        net = create_model("mnist_cnn", num_classes=10, in_chans=1, input_size=size)
        t = time.perf_counter()
        fit(net, train, config=TrainConfig(epochs=epochs, batch_size=32,
                                           lr=1e-3, val_split=0.0, seed=args.seed),
            preprocess=pre, verbose=False)
        sc = evaluate(net, test, pre)
        row["mnist_cnn scratch"] = {"test_acc": round(sc.top1, 4), "epochs": epochs,
                                    "train_seconds": round(time.perf_counter() - t, 1)}
        for name, v in row.items():
            v["ratio_to_scratch"] = round(v["test_acc"] / sc.top1, 3)
        results[str(k)] = row
    line = {"bench": "few_shot", "dataset": "fashion-mnist", "test_images": len(test),
                      "backbone": "efficientnet_lite0 (bundled ImageNet weights)",
                      "reference": "mnist_cnn scratch", "test_embed_seconds": round(test_embed_s, 1),
                      "test_embeddings_from_cache": test_cached,
                      "load_average": round(os.getloadavg()[0], 1), "results": results}
    print(json.dumps(line))
    if args.figure:
        draw(line, args.figure)


def draw(line: dict, path: str) -> None:
    """Grouped bars: test accuracy per method, one group per shot count."""
    from convlab.figures.base import plt, save_figure

    shots = list(line["results"])
    methods = list(line["results"][shots[0]])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        accs = [line["results"][k][m]["test_acc"] for k in shots]
        bars = ax.bar([i + j * width for i in range(len(shots))], accs, width, label=m)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(shots))],
                  [f"{k} images per class" for k in shots])
    ax.set_ylabel(f"test accuracy ({line['test_images']:,} images)")
    ax.set_ylim(0, 1)
    ax.set_title("Fashion-MNIST few-shot: pretrained EfficientNet-Lite0 vs mnist_cnn from scratch",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
