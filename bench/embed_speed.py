"""Embedding throughput: convlab's embedding path versus a bare forward_features loop.

Both run the same EfficientNet-Lite0 with the bundled weights on the same batches of
224x224 images. The reference is the plainest loop a user would write:
`model.forward_features(x)` on float NCHW input under torch.no_grad. convlab's path is
`Embedder.embed` with the cache off (uint8 in, preprocessing, channels_last,
inference mode, pooled features out). The two alternate for --rounds rounds and each
keeps its best time. Also reports model-FLOP utilisation: the model's MACs (counted
with forward hooks on every Conv2d and Linear) x 2 x images/s over a measured conv
peak (a large dense 3x3 convolution in channels_last). Prints one JSON line; `ratio` is
convlab's images/s over the reference's (target >= 0.9).

    .venv/bin/python bench/embed_speed.py [--images 64] [--batch-size 32] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import time


def count_macs(model, x) -> int:
    import torch
    from torch import nn

    total = [0]

    def conv(m, inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total[0] // len(x)


def conv_peak(rounds: int) -> float:
    """FLOP/s of a large dense 3x3 convolution (128 -> 128 channels, 56x56, batch 16)."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(16, 128, 56, 56).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3).contiguous(memory_format=torch.channels_last)
    flops = 2 * 16 * 128 * 56 * 56 * 128 * 9
    best = float("inf")
    with torch.inference_mode():
        F.conv2d(x, w, padding=1)
        for _ in range(rounds):
            t = time.perf_counter()
            F.conv2d(x, w, padding=1)
            best = min(best, time.perf_counter() - t)
    return flops / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from convlab.embed import Embedder
    from convlab.models import pretrained_model

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 224, 224), dtype=torch.uint8, generator=gen)
    embedder = Embedder("efficientnet_lite0", cache=False)
    bare = pretrained_model("efficientnet_lite0").eval()
    pre = embedder.preprocess
    x_all = pre(images)  # the reference gets its float input for free

    def reference() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for b in range(0, args.images, args.batch_size):
                bare.forward_features(x_all[b:b + args.batch_size])
        return time.perf_counter() - t

    def ours() -> float:
        t = time.perf_counter()
        embedder.embed(images, batch_size=args.batch_size, show_progress=False)
        return time.perf_counter() - t

    ours_best = ref_best = float("inf")
    reference(), ours()  # warm-up
    for _ in range(args.rounds):
        ref_best = min(ref_best, reference())
        ours_best = min(ours_best, ours())
    macs = count_macs(bare, x_all[:2])
    peak = conv_peak(args.rounds + 2)
    ours_ips, ref_ips = args.images / ours_best, args.images / ref_best
    print(json.dumps({
        "bench": "embed_speed", "model": "efficientnet_lite0", "input": "3x224x224",
        "images": args.images, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "convlab_images_per_s": round(ours_ips, 2), "reference_images_per_s": round(ref_ips, 2),
        "ratio": round(ours_ips / ref_ips, 3), "target_ratio": 0.9,
        "gmacs_per_image": round(macs / 1e9, 3), "conv_peak_gflops": round(peak / 1e9, 1),
        "mfu": round(2 * macs * ours_ips / peak, 3),
        "load_average": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
