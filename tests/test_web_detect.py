"""The teach app's Detect view: POST /api/detect through FastAPI's test client, and the
view live in a real headless Chromium whose fake webcam plays a clip made from a real
photo of three people (face-api's demo photo sample3.jpg) or from one with no face
(scikit-image's coffee cup).

The browser test reuses test_web_browser's server and browser helpers.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_web_browser import env  # noqa: F401 (a fixture: the teach server's environment)
from test_web_browser import ARTIFACTS, CHROMIUM, launch, start_server, stop_server

from conftest import face_api_folder
from convlab.web import create_app


def face_api_photo(name: str) -> Path:
    """One of face-api's demo photos (1920 pixels wide); skips without the package."""
    return face_api_folder() / "demo" / name


def jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def group_frame(size: tuple[int, int] = (320, 240), dx: int = 0, dy: int = 0) -> np.ndarray:
    """uint8 (h, w, 3): the centre 4:3 part of sample3.jpg (three faces side by side in
    its upper half), scaled to 10% more than `size` and cut at (dx, dy)."""
    img = Image.open(face_api_photo("sample3.jpg")).convert("RGB")
    w, h = img.size
    cw = round(h * 4 / 3)
    img = img.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
    big = img.resize((round(size[0] * 1.1), round(size[1] * 1.1)), Image.BILINEAR)
    return np.asarray(big)[dy:dy + size[1], dx:dx + size[0]]


def coffee_frame(size: tuple[int, int] = (320, 240), dx: int = 0, dy: int = 0) -> np.ndarray:
    """uint8 (h, w, 3): scikit-image's photo of a coffee cup (no face), as group_frame."""
    import skimage.data

    img = Image.fromarray(skimage.data.coffee())                    # 600x400
    big = img.resize((round(size[0] * 1.1), round(size[1] * 1.1)), Image.BILINEAR)
    return np.asarray(big)[dy:dy + size[1], dx:dx + size[0]]


def overlap(a: list[float], b: list[float]) -> float:
    """The area two [x1, y1, x2, y2] boxes share."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


# ------------------------------------------------------------------------------ the API

@pytest.fixture(scope="module")
def client(tmp_path_factory):
    home = tmp_path_factory.mktemp("detect") / "home"
    with TestClient(create_app(home, fast_preview=False)) as c:
        yield c


def test_detect_finds_the_three_faces_of_a_group_photo(client):
    data = face_api_photo("sample3.jpg").read_bytes()
    r = client.post("/api/detect", files={"file": ("group.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["width"], out["height"]) == (1920, 1350)
    assert out["engine"] == "onnxruntime", client.app.state.faces.fallback
    assert 0 < out["ms"] < 5000
    boxes = out["boxes"]
    # three people, one box each: in the image, in its upper half, apart, best first
    assert len(boxes) == 3, boxes
    for b in boxes:
        x1, y1, x2, y2 = b["box"]
        assert b["label"] == "face" and 0.5 <= b["score"] <= 1
        assert 0 <= x1 < x2 <= 1920 and 0 <= y1 < y2 <= 1350
        assert 100 < x2 - x1 < 600 and 100 < y2 - y1 < 600    # faces are ~300 px here
        assert (y1 + y2) / 2 < 1350 / 2
    assert all(overlap(a["box"], b["box"]) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert [b["score"] for b in boxes] == sorted((b["score"] for b in boxes), reverse=True)

    # the score threshold keeps the boxes scoring at least that: raised above the second
    # best, only the best is left, the same box (the raw body works as the form does)
    best, second = boxes[0]["score"], boxes[1]["score"]
    r = client.post(f"/api/detect?score={(best + second) / 2:.4f}", content=data,
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["boxes"] == boxes[:1], r.text
    # the network size: 416 (face-api's default) finds the same three people
    r = client.post("/api/detect?size=416", content=data)
    assert r.status_code == 200, r.text
    big = r.json()["boxes"]
    assert len(big) == 3 and r.json()["size"] == 416
    assert all(max(overlap(a["box"], b["box"]) for b in boxes) > 0 for a in big)


def test_detect_a_webcam_frame_and_images_without_faces(client):
    frame = jpeg(group_frame(), quality=85)            # what the page sends: 320x240 JPEG
    r = client.post("/api/detect", content=frame)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["width"], out["height"]) == (320, 240) and out["size"] == 320
    assert len(out["boxes"]) == 3, out
    for b in out["boxes"]:
        x1, y1, x2, y2 = b["box"]
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240 and b["score"] >= 0.5
    flat = np.full((240, 320, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for name, arr in (("coffee", coffee_frame()), ("flat grey", flat), ("noise", noise)):
        r = client.post("/api/detect", content=jpeg(arr))
        assert r.status_code == 200 and r.json()["boxes"] == [], (name, r.text)


def test_detect_refuses_bad_options_and_non_images(client):
    frame = jpeg(group_frame())
    for query, status, text in (("score=1.5", 400, "score must lie in 0..1; got 1.5"),
                                ("score=-0.1", 400, "score must lie in 0..1; got -0.1"),
                                ("size=300", 400, "size must be a multiple of 32 from 32 to 2048"),
                                ("score=high", 422, "valid number")):
        r = client.post(f"/api/detect?{query}", content=frame)
        assert r.status_code == status, (query, r.text)
        assert text in json.dumps(r.json()["detail"]), (query, r.text)
    for body in (b"", b"not an image at all", b"%PDF-1.4 ..."):
        r = client.post("/api/detect", files={"file": ("x.jpg", body, "image/jpeg")})
        assert r.status_code == 415, r.text
        assert r.json()["detail"] == "not an image file; accepted: JPEG, PNG, WebP, GIF"
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "BMP")
    r = client.post("/api/detect", content=buf.getvalue())
    assert r.status_code == 415 and "BMP images are not accepted" in r.json()["detail"]


def test_detect_too_large_uploads_are_refused_before_decoding(tmp_path):
    from convlab.web import Limits

    limits = Limits(file_bytes=20_000, pixels=100 * 100)
    with TestClient(create_app(tmp_path / "home", fast_preview=False, limits=limits)) as c:
        r = c.post("/api/detect", content=jpeg(group_frame(), quality=95))   # ~25 kB
        assert r.status_code == 413 and "over the limit of 20,000" in r.json()["detail"]
        r = c.post("/api/detect", content=jpeg(np.zeros((120, 100, 3), np.uint8)))
        assert r.status_code == 413 and "100x120 image is over the limit of 10,000 pixels" \
            in r.json()["detail"]


def test_detect_without_the_weights_says_so_and_recovers_once_installed(tmp_path, monkeypatch):
    installed = face_api_photo("sample3.jpg").parent.parent
    frame = jpeg(group_frame())
    damaged = tmp_path / "face-api"
    (damaged / "model").mkdir(parents=True)
    (damaged / "model" / "tiny_face_detector_model.bin").write_bytes(b"\0" * 100)
    (damaged / "model" / "tiny_face_detector_model-weights_manifest.json").write_text("[]")
    monkeypatch.setenv("CONVLAB_FACE_API", str(damaged))
    with TestClient(create_app(tmp_path / "home", fast_preview=False)) as c:
        r = c.post("/api/detect", content=frame)
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert detail.startswith("the face detector is not available: ") and "reinstall" in detail
        assert str(damaged) in detail
        # the request's own faults still come first
        assert c.post("/api/detect?score=2", content=frame).status_code == 400
        monkeypatch.setenv("CONVLAB_FACE_API", str(installed))   # installed: no restart needed
        r = c.post("/api/detect", content=frame)
        assert r.status_code == 200 and len(r.json()["boxes"]) == 3, r.text


# -------------------------------------------------------------------------- the browser

def write_y4m_frames(path: Path, frames: list[np.ndarray], fps: int = 30) -> Path:
    """A YUV4MPEG2 clip (4:2:0, full-range BT.601) of uint8 (h, w, 3) RGB frames, as
    test_web_browser.write_y4m writes its patterns."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            rgb = rgb.astype(np.float32)
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
            v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
            sub = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean((1, 3))  # noqa: E731
            f.write(b"FRAME\n")
            for plane in (y, sub(u), sub(v)):
                f.write(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())
    return path


def panning(frame, n: int = 30) -> list[np.ndarray]:
    """n frames of a slow pan (1 pixel right, 0.5 down per frame, and back): a webcam
    held by hand, one second at 30 frames a second."""
    return [frame(dx=min(t, n - t), dy=min(t, n - t) // 2) for t in range(n)]


STAGE = "document.querySelector('[data-testid=detect-stage]').dataset"


def detect_live(page, url: str) -> None:
    """Open the Detect view, start it, and wait until frames come back."""
    page.goto(url)
    page.click('[data-testid="tab-detect"]')
    assert page.url.endswith("#detect") and page.is_hidden("#teach-view")
    page.click('[data-testid="detect-toggle"]')
    # the first request loads the detector (after the backbone's ONNX export at start-up)
    page.wait_for_function(f"Number({STAGE}.frames) >= 20", timeout=120_000)


def boxes_seen(page) -> None:
    """Record the largest number of boxes any frame got from now on (window.maxBoxes)."""
    page.evaluate("""() => {
        const stage = document.querySelector('[data-testid=detect-stage]');
        window.maxBoxes = 0; window.framesSeen = 0;
        new MutationObserver(() => {
            window.framesSeen++;
            window.maxBoxes = Math.max(window.maxBoxes, JSON.parse(stage.dataset.boxes).length);
        }).observe(stage, {attributes: true, attributeFilter: ['data-boxes']});
    }""")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="needs Debian chromium (make sysdeps installs it)")
def test_detect_view_live_in_chromium(tmp_path, env):  # noqa: F811 (env: the fixture)
    from playwright.sync_api import sync_playwright

    face_clip = write_y4m_frames(tmp_path / "group.y4m", panning(group_frame))
    empty_clip = write_y4m_frames(tmp_path / "coffee.y4m", panning(coffee_frame))
    proc, url = start_server(tmp_path / "home", env)
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            # --- the webcam shows three people
            browser = launch(p, face_clip)
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            detect_live(page, url)
            boxes_seen(page)
            page.wait_for_timeout(3000)   # the rate is over the last 2 s: a steady 2 s
            # one snapshot: the page changes with every frame
            text = "document.querySelector('[data-testid=detect-{}]').textContent"
            stage, rate_text, faces_text, seen = page.evaluate(
                f"[{{...{STAGE}}}, {text.format('rate')}, {text.format('faces')}, "
                "[window.maxBoxes, window.framesSeen]]")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "teach-detect.png"), full_page=True)
            # the slider: above every face's score no box is left
            page.eval_on_selector('[data-testid="detect-score"]',
                                  "e => { e.value = '0.99'; e.dispatchEvent(new Event('input')); }")
            assert page.inner_text("#detect-score-value") == "0.99"
            page.wait_for_function(f"JSON.parse({STAGE}.boxes).length === 0", timeout=10_000)
            page.click('[data-testid="detect-toggle"]')          # stop
            page.wait_for_function("document.querySelector('[data-testid=detect-toggle]')"
                                   ".textContent === 'Start detecting'", timeout=10_000)
            browser.close()

            # --- the webcam shows a coffee cup
            browser = launch(p, empty_clip)
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            detect_live(page, url)
            boxes_seen(page)
            page.wait_for_function("window.framesSeen >= 20", timeout=30_000)
            empty = page.evaluate(f"[window.maxBoxes, window.framesSeen, {STAGE}.boxes]")
            browser.close()
    finally:
        stop_server(proc)
    assert not errors, errors

    # three people: each frame's boxes (3 in the photo; at least 1 in every frame) in the
    # 320x240 frame's pixels, and the page shows them live
    boxes = json.loads(stage["boxes"])
    assert 1 <= len(boxes) <= 3 and seen[0] <= 3 and seen[1] >= 20, (stage, seen)
    for b in boxes:
        x1, y1, x2, y2 = b["box"]
        assert b["label"] == "face" and b["score"] >= 0.5
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
    assert faces_text == f"{len(boxes)} face{'s' if len(boxes) != 1 else ''}"
    # the rate the page measured, one frame in flight: the target is 15 frames/s (20-35
    # measured here on the shared 2-core machine at a load average of 2.6-4.7, docs/teach.md);
    # the server's time fits between two frames
    fps, server_ms = float(stage["fps"]), float(stage["ms"])
    print(f"Detect view: {fps} frames/s, {server_ms} ms on the server; {rate_text}")
    assert rate_text.startswith(f"{fps:.1f} frames/s · {server_ms} ms on the server"), rate_text
    assert fps >= 15 and 0 < server_ms < 1000 / fps, stage
    # a coffee cup: no box in any of 20 frames or more
    assert empty[0] == 0 and empty[1] >= 20 and empty[2] == "[]", empty
