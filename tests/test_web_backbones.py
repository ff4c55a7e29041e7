"""The teach app's backbone choice through its JSON API: a project created on MobileNetV2
trains, predicts and exports on it; switching computes new embeddings in the other
backbone's cache and never mixes them; homes from before the choice open on
EfficientNet-Lite0; the preview's ImageNet labels before any model (MobileNetV2)."""
from __future__ import annotations

import contextlib
import io
import json
import sqlite3

from fastapi.testclient import TestClient

from convlab.cli import main
from convlab.web import create_app
from test_web_api import photo_bytes, upload, wait_trained


def test_a_project_on_mobilenet_v2_trains_predicts_exports_and_switches(tmp_path):
    home = tmp_path / "home"
    with TestClient(create_app(home, fast_preview=False)) as client:
        info = client.get("/api/info").json()
        assert [b["name"] for b in info["backbones"]] == [
            "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"]
        r = client.post("/api/projects", json={"name": "cozmo", "backbone": "resnet18"})
        assert r.status_code == 400 and "valid: efficientnet_lite0" in r.json()["detail"]
        project = client.post("/api/projects", json={"name": "cozmo", "backbone": "mobilenet_v2"}).json()
        pid = project["id"]
        assert project["backbone"] == "mobilenet_v2"
        assert client.get("/api/projects").json()[0]["backbone"] == "mobilenet_v2"
        cids = [client.post(f"/api/projects/{pid}/classes", json={"name": n}).json()["id"]
                for n in ("cat", "cup")]
        upload(client, cids[0], [photo_bytes("chelsea", i) for i in range(4)])
        upload(client, cids[1], [photo_bytes("coffee", i) for i in range(4)])

        assert client.post(f"/api/projects/{pid}/train", json={"head": "linear"}).status_code == 202
        assert wait_trained(client, pid)["state"] == "ready"
        first = client.get(f"/api/projects/{pid}/training").json()["model"]
        assert first["metrics"]["backbone"] == "mobilenet_v2" and first["metrics"]["embedded"] == 8
        r = client.post(f"/api/projects/{pid}/predict", content=photo_bytes("chelsea", 50)).json()
        assert r["top"] == "cat" and r["backbone"] == "mobilenet_v2"

        out = client.post(f"/api/projects/{pid}/export").json()
        assert out["backbone"] == "mobilenet_v2"
        meta = json.loads((home / "exports" / f"project-{pid}-model-{first['id']}" / "run" /
                           "meta.json").read_text())
        assert meta["backbone"]["name"] == "mobilenet_v2"
        assert meta["preprocess"]["mean"] == [0.485, 0.456, 0.406]   # MobileNetV2's, not Lite0's
        probe = tmp_path / "probe.jpg"
        probe.write_bytes(photo_bytes("coffee", 97))
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["predict", out["run"], str(probe)]) == 0
        assert buf.getvalue().split(":")[1].split()[0] == "cup", buf.getvalue()

        # another backbone: new embeddings in its own cache folder, none mixed in
        r = client.patch(f"/api/projects/{pid}", json={"backbone": "efficientnet_lite0"})
        assert r.status_code == 200 and r.json()["backbone"] == "efficientnet_lite0"
        r = client.post(f"/api/projects/{pid}/predict", content=photo_bytes("chelsea", 50)).json()
        assert r["backbone"] == "mobilenet_v2" and r["model_id"] == first["id"]  # the model's own
        client.post(f"/api/projects/{pid}/train", json={"head": "linear"})
        assert wait_trained(client, pid)["state"] == "ready"
        m = client.get(f"/api/projects/{pid}/training").json()["model"]["metrics"]
        assert (m["backbone"], m["embedded"], m["from_cache"]) == ("efficientnet_lite0", 8, 0)
        assert len([d for d in (home / "embeddings").iterdir() if d.is_dir()]) == 2
        r = client.post(f"/api/projects/{pid}/predict", content=photo_bytes("coffee", 51)).json()
        assert r["top"] == "cup" and r["backbone"] == "efficientnet_lite0"
        assert client.patch(f"/api/projects/{pid}", json={}).status_code == 400


def test_imagenet_labels_before_any_model_are_mobilenet_v2s(tmp_path):
    """The lecture's Cozmo demo in the preview: top-5 ImageNet labels of a frame."""
    with TestClient(create_app(tmp_path / "home", fast_preview=False)) as client:
        assert client.get("/api/info").json()["imagenet_model"] == "mobilenet_v2"
        r = client.post("/api/imagenet", content=photo_bytes("coffee", 1, "PNG")).json()
        assert r["model"] == "mobilenet_v2" and len(r["classes"]) == 5 and r["top"] == "espresso"
        assert r["probs"] == sorted(r["probs"], reverse=True) and 0 < sum(r["probs"]) <= 1
        files = {"file": ("x.jpg", photo_bytes("chelsea", 2), "image/jpeg")}
        r = client.post("/api/imagenet?top=3", files=files).json()
        assert len(r["classes"]) == 3 and "cat" in r["top"]
        assert client.post("/api/imagenet", content=b"not an image").status_code == 415
        assert client.post("/api/imagenet?top=0", content=photo_bytes("coffee", 1)).status_code == 400


def test_a_home_from_before_backbones_opens_on_lite0(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with sqlite3.connect(home / "teach.sqlite3") as db:
        db.executescript("""
            CREATE TABLE projects(id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL);
            INSERT INTO projects VALUES (1, 'old', 0);""")
    db.close()
    with TestClient(create_app(home, fast_preview=False)) as client:
        assert client.get("/api/projects/1").json()["backbone"] == "efficientnet_lite0"
        r = client.post("/api/projects", json={"name": "new", "backbone": "efficientnet_lite2"})
        assert r.status_code == 201 and r.json()["backbone"] == "efficientnet_lite2"
    with TestClient(create_app(home, fast_preview=False)) as client:  # migrating twice is a no-op
        assert [p["backbone"] for p in client.get("/api/projects").json()] == [
            "efficientnet_lite0", "efficientnet_lite2"]


def test_onnx_backbones_report_each_failed_export_and_start_none(tmp_path):
    """OnnxBackbones.error names every backbone whose export failed, and asking starts
    no export."""
    import threading

    from convlab.web.learn import OnnxBackbones
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    backbones = OnnxBackbones(blocker / "onnx")     # every export fails making its folder
    assert backbones.error == ""
    assert not [t for t in threading.enumerate() if t.name.startswith("onnx-")]
    for name in ("efficientnet_lite0", "mobilenet_v2"):
        assert backbones.ensure(name) is None
    lines = backbones.error.splitlines()
    assert [line.split(":")[0] for line in lines] == ["efficientnet_lite0", "mobilenet_v2"]
    assert all("NotADirectoryError" in line for line in lines), lines
