"""Thousands of samples per class in the teach app (where Teachable Machine crashes):
import 4 classes x 2,000 real Fashion-MNIST images through the HTTP API of the real
`convlab teach` server, train (frozen EfficientNet-Lite0 features + dense head), and
report the times, the held-out accuracy and the server's peak memory.

The reference, measured in the same run: bare `embed_images` throughput on 256 of the
same images in this process; `ratio` = the server's embedding rate during training /
that bare rate (1.0: no overhead from the store, the thread or the API). Prints one
JSON line.

    .venv/bin/python bench/teach_scale.py [--per-class 2000] [--head mlp]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from teach_latency import start_server, train  # noqa: E402

CLASSES = {0: "T-shirt", 1: "Trouser", 7: "Sneaker", 8: "Bag"}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, "L").save(buf, "PNG")
    return buf.getvalue()


def bare_embed_rate(images: np.ndarray) -> float:
    import torch

    from convlab.data import Preprocess
    from convlab.embed import embed_images
    torch.set_num_threads(1)  # as the server runs
    x = torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1)
    x = Preprocess(3, (256, 256), "shorter_crop", 1.0, interpolation="bicubic").fit(x)
    embed_images(x[:32], cache=False, progress=False, batch_size=32)
    t = time.perf_counter()
    embed_images(x, cache=False, progress=False, batch_size=32)
    return len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=2000, help="images per class (default 2000)")
    ap.add_argument("--head", default="mlp", choices=("mlp", "linear", "knn"))
    ap.add_argument("--batch", type=int, default=100, help="files per upload request")
    args = ap.parse_args()
    from convlab.data import load_dataset
    data = load_dataset("fashion-mnist", "train")
    images, labels = data.images[:, 0].numpy(), data.labels.numpy()
    sample = np.concatenate([np.nonzero(labels == c)[0][:64] for c in CLASSES])
    bare = bare_embed_rate(images[sample])  # the reference first: the long part comes next
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp) / "home")
        try:
            with httpx.Client(base_url=url, timeout=600) as client:
                pid = client.post("/api/projects", json={"name": "fashion"}).json()["id"]
                t0 = time.time()
                for label, name in CLASSES.items():
                    cid = client.post(f"/api/projects/{pid}/classes", json={"name": name}).json()["id"]
                    idx = np.nonzero(labels == label)[0][:args.per_class]
                    for b in range(0, len(idx), args.batch):
                        files = [("files", (f"{i}.png", png(images[i]), "image/png"))
                                 for i in idx[b:b + args.batch]]
                        client.post(f"/api/classes/{cid}/samples?source=import",
                                    files=files).raise_for_status()
                upload_s = time.time() - t0
                stored = sum(c["samples"] for c in client.get(f"/api/projects/{pid}").json()["classes"])
                rss_after_upload = peak_rss_mb(proc.pid)
                job = train(client, pid, {"head": args.head})
                model = client.get(f"/api/projects/{pid}/training").json()["model"]
                retrain = train(client, pid, {"head": args.head})  # embeddings stored: head only
            peak = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)
    n = args.per_class * len(CLASSES)
    train_s = job["finished"] - job["started"]
    server_rate = stored / train_s
    print(json.dumps({
        "bench": "teach_scale", "classes": len(CLASSES), "per_class": args.per_class,
        "images_requested": n, "images_stored": stored, "upload_seconds": round(upload_s, 1),
        "upload_images_per_s": round(stored / upload_s, 1), "train_seconds": round(train_s, 1),
        "retrain_seconds_cached_embeddings": round(retrain["finished"] - retrain["started"], 2),
        "head": args.head, "held_out_accuracy": round(model["metrics"]["accuracy"], 4),
        "held_out_images": model["metrics"]["held_out"],
        "server_peak_rss_mb": round(peak, 1), "server_rss_after_upload_mb": round(rss_after_upload, 1),
        "server_embed_images_per_s": round(server_rate, 1),
        "reference_bare_embed_images_per_s": round(bare, 1), "ratio": round(server_rate / bare, 3),
        "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
