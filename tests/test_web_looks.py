"""The teach preview's 'where it looks': POST /api/projects/{pid}/looks gives the
prediction and a Grad-CAM map of the project's latest model (real backbone, real photos)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from convlab.web import create_app
from test_web_api import make_project, photo_bytes, upload, wait_trained


def _halves(left: bytes, right: bytes) -> bytes:
    """A 256x256 JPEG: the left half from one photo, the right half from another."""
    a, b = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB").resize((256, 256))) for x in (left, right))
    arr = np.concatenate([a[:, :128], b[:, 128:]], axis=1)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), "RGB").save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("looks") / "home"
    with TestClient(create_app(home, fast_preview=False)) as client:
        pid, (cat, coffee) = make_project(client, classes=("cat", "coffee"))
        assert upload(client, cat, [photo_bytes("chelsea", s) for s in range(8)]).status_code == 201
        assert upload(client, coffee, [photo_bytes("coffee", s) for s in range(8)]).status_code == 201
        assert client.post(f"/api/projects/{pid}/train", json={"head": "mlp", "epochs": 30}).status_code == 202
        assert wait_trained(client, pid)["state"] == "ready"
        yield client, pid


def test_looks_answers_a_map_where_the_class_is(trained):
    client, pid = trained
    r = client.post(f"/api/projects/{pid}/looks", content=photo_bytes("chelsea", 99))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["top"] == out["class"] == "cat" and out["classes"] == ["cat", "coffee"]
    cam = np.array(out["map"])
    assert cam.shape == (7, 7) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    # Lite0 sees the centre 224 of the 256-pixel frame
    assert out["box"] == pytest.approx([16 / 256, 16 / 256, 224 / 256, 224 / 256])
    # half cat, half coffee: the evidence for each class lies on its own half
    frame = _halves(photo_bytes("chelsea", 98), photo_bytes("coffee", 98))
    for target, side in ((0, "left"), (1, "right")):
        cam = np.array(client.post(f"/api/projects/{pid}/looks?target={target}",
                                   content=frame).json()["map"])
        left, right = cam[:, :3].sum(), cam[:, 4:].sum()
        assert (left > right) if side == "left" else (right > left), (target, cam.round(2))


def test_looks_checks_the_layer_once_per_model(trained, monkeypatch):
    """The layer is checked when the model is loaded, not on every frame: each check
    traces the whole model on the meta device, several times the cost of a map."""
    from convlab.analysis import attribution
    client, pid = trained
    # a new model (the embeddings are cached): the next request loads it
    assert client.post(f"/api/projects/{pid}/train", json={"head": "linear"}).status_code == 202
    assert wait_trained(client, pid)["state"] == "ready"
    twins = []
    real = attribution._meta_twin
    monkeypatch.setattr(attribution, "_meta_twin", lambda m: twins.append(1) or real(m))
    frame = photo_bytes("chelsea", 97)
    first = client.post(f"/api/projects/{pid}/looks", content=frame)
    assert first.status_code == 200 and len(twins) == 2     # cam_layer and the check, once
    for target in (0, 1, None):
        query = "" if target is None else f"?target={target}"
        assert client.post(f"/api/projects/{pid}/looks{query}", content=frame).status_code == 200
    assert len(twins) == 2
    # the same map as before
    assert client.post(f"/api/projects/{pid}/looks", content=frame).json()["map"] == first.json()["map"]


def test_looks_errors(trained):
    client, pid = trained
    assert client.post("/api/projects/999/looks", content=photo_bytes("chelsea", 1)).status_code == 404
    r = client.post(f"/api/projects/{pid}/looks?target=5", content=photo_bytes("chelsea", 1))
    assert r.status_code == 400 and "0..1" in r.json()["detail"]
    empty = client.post("/api/projects", json={"name": "empty"}).json()["id"]
    r = client.post(f"/api/projects/{empty}/looks", content=photo_bytes("chelsea", 1))
    assert r.status_code == 404 and "no trained model" in r.json()["detail"]
    assert client.post(f"/api/projects/{pid}/train", json={"head": "knn"}).status_code == 202
    assert wait_trained(client, pid)["state"] == "ready"
    r = client.post(f"/api/projects/{pid}/looks", content=photo_bytes("chelsea", 1))
    assert r.status_code == 400 and "kNN head" in r.json()["detail"]
