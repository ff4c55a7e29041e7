"""Latency of the teach app on loopback: one prediction for a webcam-size frame and
adding one sample, through the real `convlab teach` server and its HTTP API.

A project with two classes (crops of scikit-image's cat and coffee photos) is trained
(kNN head); then `--n` predictions of a 640x480 JPEG frame and `--n` single-image
sample uploads are timed one at a time (p50, p99), and the live preview's rate with
two requests in flight (what the UI does). The reference, measured in the same run
and process as this script: the eager-torch path for the same frame (decode,
embed_images on the bundled backbone, head; one torch thread like the server) without HTTP. `ratio` = reference p50 /
API p50 (above 1: the API with its ONNX Runtime backbone is faster than plain torch).
Target: p50 under 100 ms for both. Prints one JSON line.

    .venv/bin/python bench/teach_latency.py [--n 100]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def start_server(home: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`convlab teach --port 0` in a subprocess; (process, base URL) once it answers."""
    proc = subprocess.Popen([sys.executable, "-m", "convlab", "teach", "--port", "0", "--home",
                             str(home)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env or os.environ.copy())
    for line in proc.stdout:
        m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        if m:
            url = m.group(1)
            for _ in range(600):
                try:
                    if httpx.get(url + "api/info", timeout=2).status_code == 200:
                        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
                        return proc, url
                except httpx.HTTPError:
                    time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def photo_jpeg(name: str, seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A random crop of a scikit-image sample photo, scaled to `size`, as JPEG."""
    import skimage.data
    rng = np.random.default_rng(seed)
    arr = getattr(skimage.data, name)()
    h, w = arr.shape[:2]
    ch, cw = int(h * 0.8), int(w * 0.8)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = Image.fromarray(arr[top:top + ch, left:left + cw]).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_project(client: httpx.Client, per_class: int = 10) -> tuple[int, list[int]]:
    pid = client.post("/api/projects", json={"name": "bench"}).json()["id"]
    cids = []
    for name, photo in (("cat", "chelsea"), ("cup", "coffee")):
        cid = client.post(f"/api/projects/{pid}/classes", json={"name": name}).json()["id"]
        files = [("files", (f"{i}.jpg", photo_jpeg(photo, i), "image/jpeg")) for i in range(per_class)]
        client.post(f"/api/classes/{cid}/samples", files=files).raise_for_status()
        cids.append(cid)
    return pid, cids


def train(client: httpx.Client, pid: int, options: dict, timeout: float = 3600) -> dict:
    client.post(f"/api/projects/{pid}/train", json=options).raise_for_status()
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/projects/{pid}/training").json()["job"]
        if job["state"] != "training":
            if job["state"] != "ready":
                raise RuntimeError(f"training failed: {job['message']}")
            return job
        time.sleep(0.25)
    raise RuntimeError("training did not finish")


def wait_fast_preview(client: httpx.Client, pid: int, frame: bytes, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.post(f"/api/projects/{pid}/predict", content=frame).json()["engine"] == "onnxruntime":
            return
        time.sleep(1)
    raise RuntimeError("the ONNX backbone did not become ready")


def percentiles(ms: list[float]) -> tuple[float, float]:
    return round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 99)), 2)


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def reference_torch_ms(frame: bytes, run_dir: Path, n: int) -> list[float]:
    """Decode, embed with eager torch (embed_images), apply the head: no HTTP, no ONNX;
    one torch thread, as the server runs."""
    import torch
    torch.set_num_threads(1)

    from convlab.checkpoint import MODEL_FILE, read_meta
    from convlab.embed import embed_images
    from convlab.models.heads import load_head
    from convlab.web.store import Limits, canonical_image

    head = load_head(run_dir / MODEL_FILE, read_meta(run_dir))

    def once():
        img = canonical_image(frame, Limits())[None]
        emb = embed_images(img, cache=False, progress=False)
        head.predict_proba(torch.as_tensor(emb))
    once()
    return timed(once, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="timed requests of each kind")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        proc, url = start_server(home)
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                pid, (cat, _) = make_project(client)
                job = train(client, pid, {"head": "knn", "k": 3})
                frame = photo_jpeg("chelsea", 999)
                wait_fast_preview(client, pid, frame)
                for _ in range(5):  # warm-up
                    client.post(f"/api/projects/{pid}/predict", content=frame)
                predict = timed(lambda: client.post(f"/api/projects/{pid}/predict", content=frame)
                                .raise_for_status(), args.n)
                top = client.post(f"/api/projects/{pid}/predict", content=frame).json()["top"]
                frames = [photo_jpeg("chelsea", 2000 + i) for i in range(args.n)]
                it = iter(frames)
                add = timed(lambda: client.post(
                    f"/api/classes/{cat}/samples?source=webcam",
                    files=[("files", ("f.jpg", next(it), "image/jpeg"))]).raise_for_status(), args.n)

                # the UI's live preview: two requests in flight, for 10 s
                stop = time.time() + 10
                done = [0, 0]

                def client_loop(i: int) -> None:
                    with httpx.Client(base_url=url, timeout=120) as c:
                        while time.time() < stop:
                            c.post(f"/api/projects/{pid}/predict", content=frame).raise_for_status()
                            done[i] += 1
                threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(2)]
                t0 = time.time()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                rate = sum(done) / (time.time() - t0)
                model_id = client.get(f"/api/projects/{pid}/training").json()["model"]["id"]
        finally:
            proc.terminate()
            proc.wait(30)
        ref = reference_torch_ms(frame, home / "models" / str(model_id), max(10, args.n // 5))
    p50, p99 = percentiles(predict)
    a50, a99 = percentiles(add)
    r50, _ = percentiles(ref)
    print(json.dumps({
        "bench": "teach_latency", "frame": "640x480 JPEG", "predicted": top,
        "predict_ms_p50": p50, "predict_ms_p99": p99, "add_sample_ms_p50": a50,
        "add_sample_ms_p99": a99, "preview_predictions_per_s": round(rate, 1),
        "reference_torch_predict_ms_p50": r50, "ratio": round(r50 / p50, 2),
        "target_ms_p50": 100, "meets_target": p50 < 100 and a50 < 100,
        "train_seconds": round(job["finished"] - job["started"], 2),
        "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
