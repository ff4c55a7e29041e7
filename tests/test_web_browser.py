"""End to end in a real headless Chromium with a fake webcam: the real `convlab teach`
server on a free loopback port, driven through its UI with Playwright.

Chromium plays a .y4m clip (written here) as its webcam; one browser process uses one
clip, so the test launches the browser twice: first with a red striped clip, then
with a blue checkered one.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = [
    pytest.mark.browser, pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="needs Debian chromium (make sysdeps installs it)"),
]


# ---------------------------------------------------------------------- clips and images

def pattern(kind: str, h: int, w: int, shift: int = 0) -> np.ndarray:
    """uint8 (h, w, 3): 'red' = red with white diagonal stripes; 'blue' = blue/yellow checks."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    if kind == "red":
        stripe = ((xx + yy + shift) // 24) % 2 == 0
        img[:] = (210, 30, 30)
        img[stripe] = (250, 235, 235)
    else:
        check = (((xx + shift) // 32) + (yy // 32)) % 2 == 0
        img[:] = (30, 60, 210)
        img[check] = (240, 220, 40)
    return img


def write_y4m(path: Path, kind: str, w: int = 320, h: int = 240, frames: int = 10) -> Path:
    """A YUV4MPEG2 clip (4:2:0, full-range BT.601) of a slowly moving pattern."""
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for t in range(frames):
            rgb = pattern(kind, h, w, shift=4 * t).astype(np.float32)
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
            v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
            sub = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean((1, 3))  # noqa: E731
            f.write(b"FRAME\n")
            for plane in (y, sub(u), sub(v)):
                f.write(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())
    return path


def write_pngs(folder: Path, kind: str, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{kind}{i}.png"
        Image.fromarray(pattern(kind, 200, 260, shift=7 * i), "RGB").save(p)
        out.append(p)
    return out


# ------------------------------------------------------------------------- the server

def start_server(home: Path, env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "convlab", "teach", "--port", "0",
                             "--home", str(home)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    deadline = time.time() + 60
    lines = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        if m:
            url = m.group(1)
            while time.time() < deadline:  # uvicorn starts right after printing
                try:
                    if httpx.get(url + "api/info", timeout=2).status_code == 200:
                        return proc, url
                except httpx.HTTPError:
                    time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines))


def stop_server(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def shared_cache(tmp_path_factory) -> Path:
    """One cache folder for this session's teach servers, so the backbone is exported to
    ONNX once, not by every server the tests start."""
    path = tmp_path_factory.getbasetemp() / "teach-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def env(tmp_path_factory):
    return {**os.environ, "XDG_CACHE_HOME": str(shared_cache(tmp_path_factory)),
            "CONVLAB_OFFLINE": "1"}


def launch(p, clip: Path):
    return p.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run",
              "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-video-capture={clip}"])


def count(page, cls: str) -> int:
    return int(page.get_attribute(f'[data-testid="class-{cls}"]', "data-count"))


def record(page, cls: str, until: int) -> None:
    """Press and hold the class's Record button, as a user does, until the class has
    `until` images (frames are captured 8 a second and uploaded 4 at a time)."""
    page.locator(f'[data-testid="class-{cls}"] .record').hover()
    page.mouse.down()
    try:
        page.wait_for_function(f"Number(document.querySelector('[data-testid=\"class-{cls}\"]')"
                               f".dataset.count) >= {until}", timeout=60_000)
    finally:
        page.mouse.up()


def train_and_wait(page, head: str, model_id: int, augment: bool = False) -> None:
    page.select_option("#head", head)
    page.set_checked("#augment", augment)
    page.click('[data-testid="train"]')
    page.wait_for_function(
        "document.querySelector('[data-testid=train-status]').textContent"
        f".startsWith('Trained model {model_id} ')", timeout=180_000)


def preview_until(page, cls: str, timeout: float = 30_000) -> None:
    page.wait_for_function(
        f"document.querySelector('[data-testid=prediction]').textContent === {cls!r}",
        timeout=timeout)


# -------------------------------------------------------------------------- the tests

def test_teach_two_classes_from_webcam_and_uploads_train_preview_export(tmp_path, env):
    from playwright.sync_api import sync_playwright

    red_clip = write_y4m(tmp_path / "red.y4m", "red")
    blue_clip = write_y4m(tmp_path / "blue.y4m", "blue")
    blue_files = write_pngs(tmp_path / "uploads", "blue", 8)
    red_file = write_pngs(tmp_path / "probe", "red", 1)[0]
    home = tmp_path / "home"
    proc, url = start_server(home, env)
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            # --- first browser: the webcam shows the red pattern
            browser = launch(p, red_clip)
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.click("#first-project")
            page.wait_for_selector('[data-testid="class-Class 1"]')
            for old, new in (("Class 1", "red"), ("Class 2", "blue")):
                field = page.locator(f'[data-testid="class-{old}"] .class-name')
                field.fill(new)
                field.press("Enter")
                page.wait_for_selector(f'[data-testid="class-{new}"]')
            record(page, "red", until=8)
            page.set_input_files('[data-testid="class-blue"] .upload', [str(f) for f in blue_files])
            page.wait_for_function("document.querySelector('[data-testid=\"class-blue\"]')"
                                   ".dataset.count === '8'", timeout=20_000)
            assert page.locator('[data-testid="class-blue"] .thumbs img').count() == 8
            train_and_wait(page, "mlp", model_id=1)
            assert page.inner_text('[data-testid="accuracy"]').startswith("100.0%")
            page.click('[data-testid="preview-toggle"]')
            preview_until(page, "red")
            browser.close()
            n_red = count_samples(url, "red")
            assert n_red >= 8

            # --- second browser: the webcam now shows the blue pattern; same project
            browser = launch(p, blue_clip)
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector('[data-testid="class-blue"]')
            assert count(page, "red") == n_red          # persisted
            record(page, "blue", until=12)
            train_and_wait(page, "knn", model_id=2, augment=True)
            page.click('[data-testid="preview-toggle"]')
            preview_until(page, "blue")
            page.wait_for_function("/predictions\\/s/.test(document.querySelector("
                                   "'[data-testid=rate]').textContent)", timeout=10_000)
            page.wait_for_timeout(2500)  # the rate is over the last 2 s: let it settle
            rate_text = page.inner_text('[data-testid="rate"]')
            page.click('[data-testid="preview-toggle"]')         # stop the live preview
            page.set_input_files("#preview-file", str(red_file))  # classify a dropped file
            preview_until(page, "red")
            page.click('[data-testid="export"]')
            page.wait_for_function("document.querySelector('[data-testid=export-result]')"
                                   ".textContent.includes('convlab predict')", timeout=120_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "teach-trained.png"), full_page=True)
            export_text = page.inner_text('[data-testid="export-result"]')
            # a new project from a folder of class folders (the picker's folder name dropped)
            folder = tmp_path / "picked"
            write_pngs(folder / "red things", "red", 3)
            write_pngs(folder / "blue things", "blue", 2)
            page.click('[data-testid="new-project"]')
            page.wait_for_selector('[data-testid="class-Class 1"]')
            page.set_input_files("#import-folder", str(folder))
            page.wait_for_selector('[data-testid="class-blue things"]')
            assert count(page, "red things") == 3 and count(page, "blue things") == 2
            browser.close()
    finally:
        stop_server(proc)
    assert not errors, errors
    # the preview is live: several predictions a second (24 measured here at a load average
    # of 5), and the server's time per frame fits between them with two requests in flight
    m = re.fullmatch(r"([\d.]+) predictions/s · ([\d.]+) ms on the server", rate_text.strip())
    assert m, rate_text
    rate, server_ms = float(m.group(1)), float(m.group(2))
    assert rate >= 2 and 0 < server_ms <= 2 * 1000 / rate, rate_text
    # the export the page names is the one `convlab predict` reads (tested on an export
    # in test_web_api); here: it is the second model's, complete
    run_dir = Path(re.search(r"convlab predict (\S+) IMAGE", export_text).group(1))
    assert run_dir.parts[-2:] == ("project-1-model-2", "run"), run_dir
    assert {"meta.json", "model.safetensors"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir.parent / "model.onnx").stat().st_size > 1_000_000
    assert (run_dir.parent / "dataset.zip").exists()


def count_samples(url: str, cls: str) -> int:
    projects = httpx.get(url + "api/projects").json()
    project = httpx.get(url + f"api/projects/{projects[-1]['id']}").json()
    return next(c["samples"] for c in project["classes"] if c["name"] == cls)
