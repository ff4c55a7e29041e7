"""The teach app's JSON API through FastAPI's test client: store, limits, guard, recovery,
training, preview and export (real backbone, real files)."""
from __future__ import annotations

import io
import re
import sqlite3
import time
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from convlab.web import Limits, Store, create_app


def image_bytes(colour, fmt="PNG", size=(120, 90), noise=0, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour, np.uint8)
    if noise:
        arr = np.clip(arr.astype(int) + rng.integers(-noise, noise + 1, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, fmt)
    return buf.getvalue()


def photo_bytes(name: str, seed: int, fmt: str = "JPEG") -> bytes:
    """A random 200x200 crop (maybe mirrored) of a scikit-image sample photo."""
    import skimage.data
    rng = np.random.default_rng(seed)
    arr = getattr(skimage.data, name)()
    top, left = rng.integers(0, arr.shape[0] - 200), rng.integers(0, arr.shape[1] - 200)
    crop = arr[top:top + 200, left:left + 200]
    crop = crop[:, ::-1] if rng.random() < 0.5 else crop
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop), "RGB").save(buf, fmt)
    return buf.getvalue()


def upload(client, cid, blobs, source="upload"):
    files = [("files", (f"f{i}.bin", b, "application/octet-stream")) for i, b in enumerate(blobs)]
    return client.post(f"/api/classes/{cid}/samples?source={source}", files=files)


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(tmp_path / "home", fast_preview=False)) as c:
        yield c


def make_project(client, name="p", classes=("red", "blue")):
    pid = client.post("/api/projects", json={"name": name}).json()["id"]
    cids = [client.post(f"/api/projects/{pid}/classes", json={"name": c}).json()["id"]
            for c in classes]
    return pid, cids


def test_projects_classes_samples_roundtrip(client, tmp_path):
    pid, (red, blue) = make_project(client)
    assert client.post(f"/api/projects/{pid}/classes", json={"name": "red"}).status_code == 409
    for bad in ["../etc", "a/b", "", ".hidden", "x\x00y", "a\\b", "z" * 65]:
        r = client.post(f"/api/projects/{pid}/classes", json={"name": bad})
        assert r.status_code == 400 and "invalid class name" in r.json()["detail"], bad
    r = client.patch(f"/api/classes/{blue}", json={"name": "bleu ☁"})
    assert r.json()["name"] == "bleu ☁"

    # every accepted format, judged by content (the client's file name says .bin)
    blobs = [image_bytes((200, 30, 30), fmt) for fmt in ("PNG", "JPEG", "WEBP")]
    gif = io.BytesIO()
    frames = [Image.new("RGB", (64, 64), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    r = upload(client, red, blobs + [gif.getvalue()])
    assert r.status_code == 201, r.text
    added = r.json()
    assert len(added) == 4
    # the stored sample is the canonical 256x256 RGB; the GIF gives its first (red) frame
    img = Image.open(io.BytesIO(client.get(f"/api/images/{added[3]['sha']}").content))
    assert img.size == (256, 256) and img.mode == "RGB"
    r_, g_, b_ = np.asarray(img).reshape(-1, 3).mean(0)
    assert r_ > 200 and b_ < 50

    # identical images share one content-addressed file
    again = upload(client, blue, [blobs[0]]).json()
    assert again[0]["sha"] == added[0]["sha"]
    path = tmp_path / "home" / "images" / added[0]["sha"][:2] / f"{added[0]['sha']}.jpg"
    assert path.exists()
    client.delete(f"/api/samples/{added[0]['id']}")
    assert path.exists()                           # still used by the 'blue' sample
    client.delete(f"/api/samples/{again[0]['id']}")
    assert not path.exists()                       # last reference gone -> file gone

    project = client.get(f"/api/projects/{pid}").json()
    assert [(c["name"], c["samples"]) for c in project["classes"]] == [("red", 3), ("bleu ☁", 0)]
    assert client.get(f"/api/classes/{red}/samples").json()[0]["id"] == added[3]["id"]  # newest first
    assert client.delete(f"/api/classes/{red}").status_code == 204
    assert client.get(f"/api/classes/{red}/samples").status_code == 404
    assert client.get("/api/images/..%2F..%2Fteach.sqlite3").status_code == 404
    assert "/api/projects/{pid}/train" in client.get("/openapi.json").json()["paths"]


def test_uploads_are_judged_by_content_and_limited(tmp_path):
    app = create_app(tmp_path / "home", fast_preview=False, limits=Limits(file_bytes=200_000, pixels=1_000_000,
                                                      request_bytes=1_000_000))
    with TestClient(app) as client:
        pid, (red, _) = make_project(client)
        r = upload(client, red, [b"GIF89a but not really an image"])
        assert r.status_code == 415 and "accepted: JPEG, PNG, WebP, GIF" in r.json()["detail"]
        r = upload(client, red, [image_bytes((0, 0, 0), "BMP")])
        assert r.status_code == 415 and "BMP images are not accepted" in r.json()["detail"]
        # a decompression bomb: tiny file, too many pixels -> refused from the header
        bomb = image_bytes((0, 0, 0), "PNG", size=(2000, 1000))
        assert len(bomb) < 50_000
        r = upload(client, red, [bomb])
        assert r.status_code == 413 and "pixels" in r.json()["detail"]
        r = upload(client, red, [image_bytes((0, 0, 0), "PNG", size=(500, 500), noise=120)])
        assert r.status_code == 413 and "bytes" in r.json()["detail"]
        # one bad file refuses the whole request: nothing half-added
        r = upload(client, red, [image_bytes((9, 9, 9)), b"junk"])
        assert r.status_code == 415 and "file 2 of 2" in r.json()["detail"]
        r = client.post(f"/api/classes/{red}/samples", content=b"x" * 1_100_000,
                        headers={"content-type": "application/octet-stream"})
        assert r.status_code == 413
        assert client.get(f"/api/projects/{pid}").json()["classes"][0]["samples"] == 0


def test_guard_origin_host_and_token(tmp_path):
    app = create_app(tmp_path / "home", token="s3cret-token-0123456789",
                     hosts={"testserver", "127.0.0.1:8000"}, fast_preview=False)
    with TestClient(app) as c:
        assert c.get("/api/projects").status_code == 401
        auth = {"Authorization": "Bearer s3cret-token-0123456789"}
        assert c.get("/api/projects", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/projects", headers=auth).status_code == 200
        # another web origin, or a cross-site fetch, is refused even with the token
        r = c.post("/api/projects", json={"name": "x"}, headers={**auth, "Origin": "http://evil.example"})
        assert r.status_code == 403
        r = c.get("/api/projects", headers={**auth, "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        assert c.post("/api/projects", json={"name": "x"},
                      headers={**auth, "Origin": "http://testserver"}).status_code == 201
        # a page served under a foreign Host name (DNS rebinding) is refused
        assert c.get("/api/projects", headers={**auth, "Host": "evil.example"}).status_code == 421
        # the printed URL's ?token= sets an HttpOnly cookie that works from then on
        r = c.get("/?token=s3cret-token-0123456789", follow_redirects=False)
        assert r.status_code == 303 and "HttpOnly" in r.headers["set-cookie"]
        assert c.get("/api/projects").status_code == 200


def test_restart_after_a_killed_server_cleans_up(tmp_path):
    home = tmp_path / "home"
    with TestClient(create_app(home, fast_preview=False)) as c:
        pid, (red, _) = make_project(c)
        sha = upload(c, red, [image_bytes((200, 0, 0))]).json()[0]["sha"]
    store = Store(home)
    # what a kill can leave: a file written but its row never committed, a temporary,
    # a training that never finished and its half-written model folder
    orphan = home / "images" / "ab" / ("ab" + "0" * 62 + ".jpg")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"x")
    tmp = home / "images" / sha[:2] / f".{sha}.tmp123"
    tmp.write_bytes(b"partial")
    mid = store.create_model_row(pid, {"head": "knn"})
    (home / "models" / f"{mid}.tmp").mkdir()
    (home / "models" / str(mid)).mkdir()
    half_export = home / "exports" / f".project-{pid}-model-{mid}.tmpx1y2z3"
    (half_export / "run").mkdir(parents=True)
    with TestClient(create_app(home, fast_preview=False)) as c:
        assert c.app.state.recovered == {"interrupted_trainings": 1, "orphan_files": 2,
                                         "orphan_models": 2}
        assert not orphan.exists() and not tmp.exists() and not half_export.exists()
        assert c.get(f"/api/images/{sha}").status_code == 200
        model = c.get(f"/api/projects/{pid}/models").json()[0]
        assert model["status"] == "failed" and "stopped" in model["error"]
    with sqlite3.connect(home / "teach.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_training_needs_two_samples_per_class(client):
    pid, (red, blue) = make_project(client)
    upload(client, red, [image_bytes((200, 0, 0), seed=i, noise=20) for i in range(3)])
    upload(client, blue, [image_bytes((0, 0, 200))])
    r = client.post(f"/api/projects/{pid}/train", json={"head": "knn"})
    assert r.status_code == 400 and "too few in: blue" in r.json()["detail"]
    r = client.post(f"/api/projects/{pid}/train", json={"head": "forest"})
    assert r.status_code == 400 and "valid: knn, linear, mlp" in r.json()["detail"]


def wait_trained(client, pid, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/projects/{pid}/training").json()["job"]
        if job["state"] != "training":
            return job
        time.sleep(0.2)
    raise AssertionError("training did not finish")


def test_train_preview_and_export(tmp_path, tmp_path_factory, monkeypatch):
    from test_web_browser import shared_cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_cache(tmp_path_factory)))
    home = tmp_path / "home"
    with TestClient(create_app(home)) as client:
        check_train_preview_and_export(client, tmp_path)
        # a deleted sample's embedding leaves the cache when the server starts again
        pid = client.get("/api/projects").json()[0]["id"]
        cat = client.get(f"/api/projects/{pid}").json()["classes"][0]["id"]
        gone = client.get(f"/api/classes/{cat}/samples").json()[0]
        assert client.delete(f"/api/samples/{gone['id']}").status_code == 204
    assert cached_keys(home) >= {bytes.fromhex(gone["sha"])[:16]}
    with TestClient(create_app(home, fast_preview=False)):
        keys = cached_keys(home)
    assert len(keys) == 13 and bytes.fromhex(gone["sha"])[:16] not in keys


def cached_keys(home) -> set[bytes]:
    """The keys of every row in the teach app's embeddings cache (HOME/embeddings)."""
    from safetensors.torch import load_file
    return {bytes(k.tolist()) for shard in (home / "embeddings").glob("*/*.safetensors")
            for k in load_file(str(shard))["keys"]}


def check_train_preview_and_export(client, tmp_path):
    pid, (cat, cup) = make_project(client, classes=("cat", "cup"))
    upload(client, cat, [photo_bytes("chelsea", i, ("PNG", "JPEG")[i % 2]) for i in range(7)])
    upload(client, cup, [photo_bytes("coffee", i, ("PNG", "JPEG")[i % 2]) for i in range(7)])
    r = client.post(f"/api/projects/{pid}/train", json={"head": "mlp", "epochs": 30})
    assert r.status_code == 202, r.text
    # a second request while the first runs is refused clearly, the first goes on
    second = client.post(f"/api/projects/{pid}/train", json={"head": "knn"})
    assert second.status_code == 409 and "already training" in second.json()["detail"]
    job = wait_trained(client, pid)
    assert job["state"] == "ready", job
    model = client.get(f"/api/projects/{pid}/training").json()["model"]
    m = model["metrics"]
    # 15% of 7 rounds to 1 held-out image per class; the confusion matrix counts them
    assert m["held_out"] == 2 and m["train"] == 12 and np.sum(m["confusion"]) == 2
    assert model["classes"] == ["cat", "cup"] and m["accuracy"] == 1.0
    assert m["per_class"] == {"cat": 1.0, "cup": 1.0} and m["confusion"] == [[1, 0], [0, 1]]
    assert m["embedded"] == 14 and m["from_cache"] == 0
    # preview: a raw JPEG body (a webcam frame) and a multipart file (a dropped image),
    # through ONNX Runtime once the backbone's export is ready
    backbone = client.app.state.backbone
    assert backbone.ensure() is not None, backbone.error
    frame = photo_bytes("chelsea", 99)
    r = client.post(f"/api/projects/{pid}/predict", content=frame,
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["top"] == "cat", r.text
    assert r.json()["engine"] == "onnxruntime" and abs(sum(r.json()["probs"]) - 1) < 1e-5
    # the same probabilities as the eager torch path
    client.app.state.previewer.backbone = None
    eager = client.post(f"/api/projects/{pid}/predict", content=frame).json()
    client.app.state.previewer.backbone = backbone
    assert eager["engine"] == "torch"
    assert np.allclose(eager["probs"], r.json()["probs"], atol=1e-4)
    r = client.post(f"/api/projects/{pid}/predict",
                    files={"file": ("x.png", photo_bytes("coffee", 98, "PNG"), "image/png")})
    assert r.json()["top"] == "cup"
    assert client.post(f"/api/projects/{pid}/predict", content=b"nope").status_code == 415

    # export: a run for `convlab predict`, ONNX with metadata, the dataset as class folders
    out = client.post(f"/api/projects/{pid}/export").json()
    probe = tmp_path / "probe.jpg"
    probe.write_bytes(photo_bytes("coffee", 97))
    from convlab.cli import main
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["predict", out["run"], str(probe)]) == 0
    assert buf.getvalue().split(":")[1].split()[0] == "cup", buf.getvalue()
    from convlab.export import OnnxModel
    onnx = OnnxModel(out["onnx"])
    assert onnx.meta["classes"] == ["cat", "cup"] and onnx.preprocess.size == (224, 224)
    with zipfile.ZipFile(out["dataset"]) as zf:
        names = zf.namelist()
    assert len(names) == 14 and sorted({n.split("/")[0] for n in names}) == ["cat", "cup"]
    run_zip = client.get(out["downloads"]["run.zip"])
    with zipfile.ZipFile(io.BytesIO(run_zip.content)) as zf:
        assert {n.split("/")[1] for n in zf.namelist()} >= {"meta.json", "model.safetensors"}
    assert client.get(out["downloads"]["model.onnx"]).content == open(out["onnx"], "rb").read()

    # the embeddings were stored: a second training computes none
    r = client.post(f"/api/projects/{pid}/train", json={"head": "knn", "k": 1})
    job = wait_trained(client, pid)
    assert job["state"] == "ready" and len(client.get(f"/api/projects/{pid}/models").json()) == 2
    m = client.get(f"/api/projects/{pid}/training").json()["model"]["metrics"]
    assert m["embedded"] == 0 and m["from_cache"] == 14
    # augmented copies are trained on as well (2 of each of the 12 training images)
    r = client.post(f"/api/projects/{pid}/train", json={"head": "knn", "augment": True, "copies": 2})
    assert wait_trained(client, pid)["state"] == "ready"
    m = client.get(f"/api/projects/{pid}/training").json()["model"]["metrics"]
    assert m["train"] == 12 and m["train_with_augmentation"] == 36 and m["held_out"] == 2


def test_killed_server_mid_training_keeps_every_sample(tmp_path, tmp_path_factory):
    """SIGKILL the real server while it trains; the restarted one has every sample,
    reports the interrupted training, and trains again."""
    import os
    import signal

    import httpx
    from test_web_browser import shared_cache, start_server, stop_server

    env = {**os.environ, "XDG_CACHE_HOME": str(shared_cache(tmp_path_factory)), "CONVLAB_OFFLINE": "1"}
    home = tmp_path / "home"
    proc, url = start_server(home, env)
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            pid, (cat, cup) = make_project(c, classes=("cat", "cup"))
            upload(c, cat, [photo_bytes("chelsea", i) for i in range(6)]).raise_for_status()
            upload(c, cup, [photo_bytes("coffee", i) for i in range(6)]).raise_for_status()
            c.post(f"/api/projects/{pid}/train", json={"augment": True, "copies": 8}).raise_for_status()
            assert c.get(f"/api/projects/{pid}/training").json()["job"]["state"] == "training"
    finally:
        stop_server(proc, signal.SIGKILL)
    proc, url = start_server(home, env)
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            project = c.get(f"/api/projects/{pid}").json()
            assert [cl["samples"] for cl in project["classes"]] == [6, 6]
            for s in c.get(f"/api/classes/{cat}/samples").json():
                assert c.get(f"/api/images/{s['sha']}").status_code == 200
            model = c.get(f"/api/projects/{pid}/models").json()[0]
            assert model["status"] == "failed" and "stopped" in model["error"]
            assert project["model"] is None
            c.post(f"/api/projects/{pid}/train", json={"head": "knn"}).raise_for_status()
            assert wait_trained(c, pid)["state"] == "ready"
    finally:
        stop_server(proc)
    assert not list((home / "models").glob("*.tmp"))


def test_import_folder_of_class_folders(client):
    pid = client.post("/api/projects", json={"name": "imported"}).json()["id"]
    files = [("files", (f"{cls}/{i}.png", image_bytes(colour, seed=i, noise=10), "image/png"))
             for cls, colour in (("apple", (200, 0, 0)), ("pear", (0, 200, 0))) for i in range(3)]
    r = client.post(f"/api/projects/{pid}/import", files=files)
    assert r.status_code == 201 and r.json() == {"added": {"apple": 3, "pear": 3}}
    # a second import adds to the existing classes; a file outside a class folder is refused
    client.post(f"/api/projects/{pid}/import", files=files[:1])
    assert [c["samples"] for c in client.get(f"/api/projects/{pid}").json()["classes"]] == [4, 3]
    r = client.post(f"/api/projects/{pid}/import", files=[("files", ("loose.png", image_bytes((1, 2, 3)), "image/png"))])
    assert r.status_code == 400 and "class folder" in r.json()["detail"]
    r = client.post(f"/api/projects/{pid}/import", files=[("files", ("../x.png", image_bytes((1, 2, 3)), "image/png"))])
    assert r.status_code == 400


def test_import_into_a_missing_project_is_404(client):
    r = client.post("/api/projects/999/import")
    assert r.status_code == 404 and "no project with id 999" in r.json()["detail"]
    files = [("files", ("apple/0.png", image_bytes((200, 0, 0)), "image/png"))]
    assert client.post("/api/projects/999/import", files=files).status_code == 404
    assert client.get("/api/projects").json() == []


def test_errors_map_to_http_codes_by_type():
    from convlab.errors import (CheckpointError, Conflict, ConfigError, ConvlabError, DatasetError,
                                NotFound, TooLarge, UnsupportedImage)
    from convlab.web.app import http_status
    assert [http_status(e("x")) for e in (NotFound, Conflict, TooLarge, UnsupportedImage)] == \
        [404, 409, 413, 415]
    # everything else a user can get wrong is a 400, subclasses included
    assert [http_status(e("x")) for e in (ConvlabError, DatasetError, ConfigError, CheckpointError)] == \
        [400] * 4
    assert issubclass(UnsupportedImage, DatasetError)
    assert not any(hasattr(e, "status") for e in (NotFound, Conflict, TooLarge, UnsupportedImage))


def test_a_home_from_before_the_embeddings_cache_still_opens(tmp_path):
    """Homes made when embeddings lived in an SQLite table open; the table is dropped."""
    home = tmp_path / "home"
    home.mkdir()
    with sqlite3.connect(home / "teach.sqlite3") as db:
        db.executescript("""
            CREATE TABLE projects(id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL);
            CREATE TABLE embeddings(sha TEXT NOT NULL, backbone TEXT NOT NULL, vector BLOB NOT NULL,
                                    PRIMARY KEY(sha, backbone));
            INSERT INTO projects VALUES (1, 'old', 0);
            INSERT INTO embeddings VALUES ('ab', 'efficientnet_lite0', x'00000000');""")
    db.close()
    with TestClient(create_app(home, fast_preview=False)) as c:
        assert [p["name"] for p in c.get("/api/projects").json()] == ["old"]
        assert c.post("/api/projects/1/classes", json={"name": "a"}).status_code == 201
    with sqlite3.connect(home / "teach.sqlite3") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert "embeddings" not in tables and {"projects", "classes", "samples", "models"} <= tables


def test_embeddings_keyed_by_stored_file_decode_only_what_the_cache_lacks(tmp_path):
    """The teach app's use of the one embeddings cache: keys from the stored files'
    hashes, images loaded only when missing, progress reported as (done, total)."""
    import torch

    from convlab.embed import Embedder, prune_cache
    from convlab.web.store import embedding_keys
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    shas = [f"{i:02x}" * 32 for i in range(5)] + ["00" * 32]   # the last repeats the first file
    images[5] = images[0]
    loaded: list[int] = []

    def load(index):
        loaded.extend(index)
        return images[index]
    embedder = Embedder("efficientnet_lite0", image_size=64, cache_dir=tmp_path / "cache")
    reports: list[tuple[int, int]] = []
    first = embedder.embed_by_key(embedding_keys(shas), load, batch_size=2, show_progress=False,
                                  report=lambda d, t: reports.append((d, t)))
    assert first.shape == (6, 1280) and torch.equal(first[5], first[0])
    assert sorted(loaded) == [0, 1, 2, 3, 4]                   # the duplicate file computed once
    assert reports == [(0, 6), (3, 6), (5, 6), (6, 6)]         # rows known after each batch
    # the real rows (to float rounding: batch composition and thread count reorder sums)
    torch.testing.assert_close(first, embedder.forward(images), atol=1e-4, rtol=1e-4)
    loaded.clear()
    again = embedder.embed_by_key(embedding_keys(shas), load, show_progress=False)
    assert loaded == [] and torch.equal(again, first) and embedder.stats.cached == 6
    # pruning keeps the rows of the files still in use, and only those
    assert prune_cache(tmp_path / "cache", {k.tobytes() for k in embedding_keys(shas[:2])}) == 3
    again = embedder.embed_by_key(embedding_keys(shas), load, show_progress=False)
    assert sorted(loaded) == [2, 3, 4]
    torch.testing.assert_close(again, first, atol=1e-4, rtol=1e-4)


def test_other_threads_modules_keep_working_while_a_head_trains():
    """The server predicts in request threads while a job trains an mlp head (through
    fit): nothing the training does may break module calls in other threads."""
    import sys
    import threading

    import torch

    from convlab.transfer import fit_head
    head = fit_head("linear", torch.randn(20, 16), torch.arange(20) % 2)
    errors: list[str] = []
    calls = 0
    stop = threading.Event()

    def preview() -> None:
        nonlocal calls
        while not stop.is_set():
            try:
                head.predict_proba(torch.randn(1, 16))
                calls += 1
            except Exception as exc:  # noqa: BLE001 - any failure is what the test reports
                errors.append(f"{type(exc).__name__}: {exc}")
    # hand the GIL over often, so the preview thread also runs inside the trainer's
    # shortest windows (fx tracing once broke other threads' module calls in one)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    thread = threading.Thread(target=preview)
    thread.start()
    try:
        for seed in range(3):
            fit_head("mlp", torch.randn(40, 16), torch.arange(40) % 2, epochs=3, seed=seed)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert calls > 0 and errors == [], errors[:3]


def test_teach_on_another_host_requires_its_printed_token(tmp_path, tmp_path_factory):
    import os
    import re
    import subprocess
    import sys

    import httpx
    from test_web_browser import shared_cache

    env = {**os.environ, "XDG_CACHE_HOME": str(shared_cache(tmp_path_factory))}
    proc = subprocess.Popen([sys.executable, "-m", "convlab", "teach", "--host", "0.0.0.0",
                             "--port", "0", "--home", str(tmp_path / "home")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        first = proc.stdout.readline()
        url, token = re.search(r"open (http://0\.0\.0\.0:\d+/)\?token=(\S+)", first).groups()
        base = url.replace("0.0.0.0", "127.0.0.1")
        for _ in range(300):
            try:
                r = httpx.get(base + "api/projects", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert r.status_code == 401
        assert httpx.get(base + "api/projects", headers={"Authorization": f"Bearer {token}"}).json() == []
    finally:
        proc.terminate()
        proc.wait(30)


def test_pages_work_offline(client):
    """The UI and the API page load nothing from the internet."""
    from convlab.web.app import STATIC
    for page in ("/", "/docs"):
        r = client.get(page)
        assert r.status_code == 200 and "<script" in r.text
    for f in STATIC.iterdir():
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", f.read_text()), f.name
    assert "/api/projects/{pid}/predict" in client.get("/openapi.json").json()["paths"]


def test_projects_trained_at_once_train_as_each_alone(tmp_path):
    """A job's augmentation and head fitting draw from torch's global generator: two
    projects training at once get the same heads and metrics as each trained alone."""
    import torch
    from safetensors.torch import load_file

    from convlab.checkpoint import MODEL_FILE
    projects = {"pets": ("chelsea", "coffee"), "space": ("astronaut", "rocket")}
    options = {"head": "mlp", "epochs": 500, "augment": True, "copies": 2}

    def train(home, together: bool) -> list[tuple[dict, dict]]:
        with TestClient(create_app(home, fast_preview=False)) as client:
            pids = []
            for name, photos in projects.items():
                pid, cids = make_project(client, name, classes=photos)
                for cid, photo in zip(cids, photos):
                    assert upload(client, cid, [photo_bytes(photo, s) for s in range(4)]).status_code == 201
                pids.append(pid)
            for pid in pids:
                assert client.post(f"/api/projects/{pid}/train", json=options).status_code == 202
                if not together:
                    assert wait_trained(client, pid)["state"] == "ready"
            out = []
            for pid in pids:
                assert wait_trained(client, pid)["state"] == "ready"
                model = client.get(f"/api/projects/{pid}/training").json()["model"]
                metrics = {k: v for k, v in model["metrics"].items() if k != "seconds"}
                weights = load_file(str(client.app.state.store.model_dir / str(model["id"]) / MODEL_FILE))
                out.append((metrics, weights))
            return out

    alone, together = train(tmp_path / "alone", False), train(tmp_path / "together", True)
    for (m1, w1), (m2, w2) in zip(alone, together):
        assert m1 == m2 and m1["train_with_augmentation"] == 18
        assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1), \
            {k: float((w1[k] - w2[k]).abs().max()) for k in w1}


def test_exports_of_one_project_at_once_both_finish(client):
    """Each export builds in a folder of its own and is renamed into place: two at once
    both succeed, and the export left is whole."""
    import threading

    from convlab.web.learn import export_project
    pid, (red, blue) = make_project(client)
    for cid, colour in ((red, (200, 0, 0)), (blue, (0, 0, 200))):
        upload(client, cid, [image_bytes(colour, seed=i, noise=20) for i in range(3)])
    assert client.post(f"/api/projects/{pid}/train", json={"head": "linear"}).status_code == 202
    assert wait_trained(client, pid)["state"] == "ready"
    store = client.app.state.store
    start = threading.Barrier(2)
    results, errors = [], []

    def export() -> None:
        start.wait()
        try:
            results.append(export_project(store, pid))
        except Exception as exc:  # noqa: BLE001 - any failure is what the test reports
            errors.append(f"{type(exc).__name__}: {exc}")
    threads = [threading.Thread(target=export) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2
    exports = store.home / "exports"
    final = exports / results[0]["dir"].split("/")[-1]
    assert [p.name for p in exports.iterdir()] == [final.name]          # no temporaries left
    assert {p.name for p in final.iterdir()} == {"run", "model.onnx", "dataset.zip"}
    with zipfile.ZipFile(final / "dataset.zip") as zf:
        assert len(zf.namelist()) == 6
    assert client.get(f"/api/projects/{pid}/export/{results[0]['model_id']}/model.onnx").status_code == 200
