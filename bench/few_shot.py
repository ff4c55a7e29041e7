"""Few-shot Fashion-MNIST: what each offline ImageNet backbone buys with 10 and 100
training images per class.

For each backbone (default: the four offline ones, efficientnet_lite0/1/2 and
mobilenet_v2, each at its own published input size) and each shot count k:
features+linear (frozen backbone, cached embeddings, softmax regression by L-BFGS),
scored on the full official test set (10,000 images), beside the lecture's mnist_cnn
trained from scratch on the same k images per class (the reference). `--finetune`
also fine-tunes EfficientNet-Lite0 (new classifier, last 2 blocks, frozen BatchNorm).
The test embeddings are cached, so only the first run pays for them. Prints one JSON
line: per k and method the test accuracy, seconds, and the accuracy as a ratio to
mnist_cnn's for the same k; per backbone the input size, embedding size and the
images per second of embedding the test set.

    .venv/bin/python bench/few_shot.py [--shots 10,100] [--backbones NAME,...] [--steps 100]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

BACKBONES = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,mobilenet_v2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", default="10,100", help="images per class, comma-separated")
    ap.add_argument("--backbones", default=BACKBONES, help="comma-separated backbones")
    ap.add_argument("--steps", type=int, default=100,
                    help="optimizer steps (batch 32) for scratch and finetune, whatever k is")
    ap.add_argument("--finetune", action="store_true",
                    help="also fine-tune efficientnet_lite0 (last 2 blocks; slow)")
    ap.add_argument("--finetune-size", type=int, default=224,
                    help="input size for --finetune (224 = the published preprocessing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-limit", type=int, help="only the first N test images (a quick check)")
    ap.add_argument("--figure", help="also draw the accuracies as a bar chart PNG here")
    ap.add_argument("--plot-only", metavar="JSON", help="draw --figure from a saved JSON line "
                    "(or a bench/results.jsonl record); no run")
    args = ap.parse_args()
    if args.plot_only:
        with open(args.plot_only) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        line = next(r.get("result", r) for r in reversed(lines)
                    if r.get("result", r).get("bench") == "few_shot")
        draw(line, args.figure or "few_shot.png")
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
    if args.test_limit:
        test = test.head(args.test_limit)
    shots = [int(s) for s in args.shots.split(",")]
    sets = {k: train_all.few_shot(k, seed=args.seed) for k in shots}
    results: dict[str, dict] = {str(k): {} for k in shots}
    backbones: dict[str, dict] = {}
    for name in args.backbones.split(","):
        embedder = Embedder(name)
        t0 = time.perf_counter()
        test_emb = embedder.embed(test.images, batch_size=100, show_progress=False)
        test_s = time.perf_counter() - t0
        computed = embedder.stats.computed
        backbones[name] = {"input_size": embedder.preprocess.size[0], "dim": int(test_emb.shape[1]),
                           "test_embed_seconds": round(test_s, 1),
                           "test_embeddings_from_cache": embedder.stats.cached,
                           "images_per_second": round(computed / test_s, 1) if computed else None}
        for k in shots:
            train = sets[k]
            t = time.perf_counter()
            emb = embedder.embed(train.images, batch_size=100, show_progress=False)
            embed_s = time.perf_counter() - t
            t = time.perf_counter()
            head = fit_head("linear", emb, train.labels, num_classes=10, seed=args.seed)
            head_s = time.perf_counter() - t
            acc = float((head.predict_proba(test_emb).argmax(1) == test.labels).float().mean())
            results[str(k)][f"features+linear {name}"] = {
                "test_acc": round(acc, 4), "head_seconds": round(head_s, 3),
                "embed_seconds": round(embed_s, 1)}
        del embedder, test_emb
    out = tempfile.mkdtemp(prefix="few_shot-")
    for k in shots:
        train, row = sets[k], results[str(k)]
        epochs = max(1, -(-args.steps * 32 // len(train)))
        if args.finetune:  # the same number of steps for every k, batch 32, Adam 1e-3 (backbone 1e-4)
            from convlab.checkpoint import load_run

            t = time.perf_counter()
            r = transfer(train, TransferConfig(strategy="finetune", image_size=args.finetune_size),
                         TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, val_split=0.0,
                                     seed=args.seed), out=os.path.join(out, f"ft{k}"), verbose=False)
            ft_train_s = time.perf_counter() - t
            run = load_run(r.run_dir)
            ft = evaluate(run.model, test, run.preprocess, batch_size=100, channels_last=True)
            row["finetune efficientnet_lite0"] = {
                "test_acc": round(ft.top1, 4), "train_seconds": round(ft_train_s, 1),
                "input_size": args.finetune_size, "epochs": epochs}
        # the reference: the lecture's mnist_cnn from scratch on the same k images per class
        torch.manual_seed(args.seed)
        pre, size = default_preprocess("mnist_cnn", 1, 28)
        net = create_model("mnist_cnn", num_classes=10, in_chans=1, input_size=size)
        t = time.perf_counter()
        fit(net, train, config=TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, val_split=0.0,
                                           seed=args.seed), preprocess=pre, verbose=False)
        sc = evaluate(net, test, pre)
        row["mnist_cnn scratch"] = {"test_acc": round(sc.top1, 4), "epochs": epochs,
                                    "train_seconds": round(time.perf_counter() - t, 1)}
        for v in row.values():
            v["ratio_to_scratch"] = round(v["test_acc"] / sc.top1, 3)
    line = {"bench": "few_shot", "dataset": "fashion-mnist", "test_images": len(test),
            "head": "linear (softmax regression, L-BFGS) on frozen features",
            "reference": "mnist_cnn scratch", "backbones": backbones,
            "load_average": round(os.getloadavg()[0], 1), "results": results}
    print(json.dumps(line))
    if args.figure:
        draw(line, args.figure)


def draw(line: dict, path: str) -> None:
    """Grouped bars: test accuracy per method, one group per shot count."""
    from convlab.figures.base import plt, save_figure

    shots = list(line["results"])
    methods = list(line["results"][shots[0]])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        accs = [line["results"][k][m]["test_acc"] for k in shots]
        bars = ax.bar([i + j * width for i in range(len(shots))], accs, width,
                      label=m.replace("features+linear ", "linear on "))
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(shots))],
                  [f"{k} images per class" for k in shots])
    ax.set_ylabel(f"test accuracy ({line['test_images']:,} images)")
    ax.set_ylim(0, 1)
    ax.set_title("Fashion-MNIST few-shot: a linear head on each frozen ImageNet backbone "
                 "vs mnist_cnn from scratch", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
