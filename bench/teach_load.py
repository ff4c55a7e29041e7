"""A bounded load test of the teach app on loopback: 8 clients predict as fast as they
can for 30 s while training jobs run (one after another on the same project) and a
ninth client adds samples. Passes when no request failed and every sample the server
acknowledged is stored (none lost).

The reference, measured in the same run: one client predicting alone before the
load; `ratio` = p50 latency under load / p50 alone. Prints one JSON line.

    .venv/bin/python bench/teach_load.py [--clients 8] [--seconds 30]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from teach_latency import (make_project, percentiles, photo_jpeg, start_server,  # noqa: E402
                           timed, train, wait_fast_preview)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8, help="concurrent predicting clients")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the load")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp) / "home")
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                pid, (cat, cup) = make_project(client, per_class=24)
                train(client, pid, {"head": "knn"})
                frame = photo_jpeg("coffee", 999)
                wait_fast_preview(client, pid, frame)
                alone = timed(lambda: client.post(f"/api/projects/{pid}/predict", content=frame)
                              .raise_for_status(), 30)

                stop = time.time() + args.seconds
                lat: list[float] = []
                failures: list[str] = []
                acknowledged: list[int] = []
                trainings = {"started": 0, "finished": 0, "refused_while_running": 0,
                             "busy_seconds": 0.0}
                lock = threading.Lock()

                ends: list[float] = []

                def predictor() -> None:
                    with httpx.Client(base_url=url, timeout=120) as c:
                        while time.time() < stop:
                            t = time.perf_counter()
                            try:
                                r = c.post(f"/api/projects/{pid}/predict", content=frame)
                                ok = r.status_code == 200 and r.json()["top"] == "cup"
                                err = "" if ok else f"{r.status_code} {r.text[:200]}"
                            except httpx.HTTPError as exc:
                                err = f"{type(exc).__name__}: {exc}"
                            with lock:
                                (failures.append(err) if err else
                                 lat.append((time.perf_counter() - t) * 1000))
                    ends.append(time.time())

                def adder() -> None:
                    i = 0
                    with httpx.Client(base_url=url, timeout=120) as c:
                        while time.time() < stop:
                            i += 1
                            try:
                                r = c.post(f"/api/classes/{cup}/samples?source=webcam", files=[
                                    ("files", ("f.jpg", photo_jpeg("coffee", 5000 + i), "image/jpeg"))])
                                if r.status_code == 201:
                                    acknowledged.extend(s["id"] for s in r.json())
                                else:
                                    failures.append(f"add {r.status_code} {r.text[:200]}")
                            except httpx.HTTPError as exc:
                                failures.append(f"add {type(exc).__name__}: {exc}")
                            time.sleep(0.1)

                def trainer() -> None:
                    with httpx.Client(base_url=url, timeout=120) as c:
                        while time.time() < stop:
                            t = time.time()
                            r = c.post(f"/api/projects/{pid}/train",
                                       json={"head": "mlp", "augment": True, "copies": 2})
                            if r.status_code != 202:
                                failures.append(f"train {r.status_code} {r.text[:200]}")
                                return
                            trainings["started"] += 1
                            # a second request meanwhile must be refused, not start a job
                            if c.post(f"/api/projects/{pid}/train", json={}).status_code == 409:
                                trainings["refused_while_running"] += 1
                            while True:
                                job = c.get(f"/api/projects/{pid}/training").json()["job"]
                                if job["state"] != "training":
                                    break
                                time.sleep(0.2)
                            if job["state"] != "ready":
                                failures.append(f"training failed: {job['message']}")
                            trainings["finished"] += 1
                            trainings["busy_seconds"] += time.time() - t

                threads = ([threading.Thread(target=predictor) for _ in range(args.clients)]
                           + [threading.Thread(target=adder), threading.Thread(target=trainer)])
                t0 = time.time()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.time() - t0             # until the last training finished
                predicting = max(ends) - t0
                stored = {s["id"] for s in client.get(f"/api/classes/{cup}/samples?limit=1000").json()}
                lost = [i for i in acknowledged if i not in stored]
        finally:
            proc.terminate()
            proc.wait(60)
    p50, p99 = percentiles(lat)
    a50, _ = percentiles(alone)
    print(json.dumps({
        "bench": "teach_load", "clients": args.clients, "seconds": round(wall, 1),
        "predictions": len(lat), "predictions_per_s": round(len(lat) / predicting, 1),
        "failed_requests": len(failures), "failures": failures[:5],
        "samples_acknowledged": len(acknowledged), "samples_lost": len(lost),
        "trainings_started": trainings["started"], "trainings_finished": trainings["finished"],
        "second_train_refused": trainings["refused_while_running"],
        "training_busy_fraction": round(min(trainings["busy_seconds"] / wall, 1.0), 2),
        "predict_ms_p50": p50, "predict_ms_p99": p99, "reference_alone_ms_p50": a50,
        "ratio": round(p50 / a50, 2), "passed": not failures and not lost,
        "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
