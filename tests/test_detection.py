"""Detection: the face-api weights, the region loss and decoding, YOLO folders and their
errors, and a detection run through train, evaluate, predict, export and detect."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import face_api_folder
from convlab.cli import main
from convlab.config import AugmentConfig, TrainConfig
from convlab.data import load_dataset
from convlab.errors import CheckpointError, ConfigError, DatasetError, ModelError
from convlab.models.detector import FACE_ANCHORS, TinyYoloDetector, head_channels
from convlab.tasks.detection import DetectionTask, RegionLoss, decode_grid, kmeans_anchors


# ------------------------------------------------------------------ pretrained weights

def test_face_api_weights_find_the_face_of_a_known_photo():
    from convlab.detect import load_detector

    photo = face_api_folder() / "demo" / "sample2.jpg"
    boxes = load_detector("tiny_face").detect(photo)
    assert len(boxes) == 1 and boxes[0].label == "face"
    # the one output checked by eye: the face in the upper right of the 1920x1367 photo
    assert boxes[0].score == pytest.approx(0.868, abs=0.01)
    assert [boxes[0].x1, boxes[0].y1, boxes[0].x2, boxes[0].y2] == pytest.approx(
        [1406, 179, 1675, 429], abs=3)
    onnx = load_detector("tiny_face", backend="onnx").detect(photo)
    assert [round(b.score, 3) for b in onnx] == [round(b.score, 3) for b in boxes]


def test_face_api_loading_is_strict_and_checked(tmp_path, monkeypatch):
    from convlab.models.detector import face_api_state, load_face_api

    src = face_api_folder()
    state = face_api_state()
    assert sum(t.numel() for t in state.values()) == 193_321
    assert state["conv1.depthwise.weight"].shape == (16, 1, 3, 3)
    with pytest.raises(ModelError, match="batchnorm=False"):
        load_face_api(TinyYoloDetector(1, batchnorm=True))
    # a damaged copy of the package is refused by its checksum
    copy = tmp_path / "face-api"
    shutil.copytree(src / "model", copy / "model")
    blob = bytearray((copy / "model" / "tiny_face_detector_model.bin").read_bytes())
    blob[100] ^= 0xFF
    (copy / "model" / "tiny_face_detector_model.bin").write_bytes(bytes(blob))
    monkeypatch.setenv("CONVLAB_FACE_API", str(copy))
    with pytest.raises(ModelError, match="SHA-256"):
        face_api_state()


def test_head_channels_follow_the_lecture():
    assert head_channels(1) == 25 and head_channels(10) == 75
    net = TinyYoloDetector(3, batchnorm=True)
    assert net(torch.zeros(2, 3, 224, 160)).shape == (2, 40, 7, 5)  # any multiple of 32


# --------------------------------------------------------------- loss and decoding

def _grid_with_box(cx: float, cy: float, w: float, h: float, anchors, size: int = 4) -> torch.Tensor:
    """A one-class output grid whose only confident anchor decodes to this box."""
    out = torch.full((1, 5 * len(anchors), size, size), -10.0)
    j, i = int(cx * size), int(cy * size)
    a = 0
    inv = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    out[0, 0:4, i, j] = torch.tensor([inv(cx * size - j), inv(cy * size - i),
                                      np.log(w * size / anchors[a][0]), np.log(h * size / anchors[a][1])])
    out[0, 4, i, j] = 5.0
    return out


def test_decode_puts_the_box_where_the_grid_says():
    anchors = [(1.0, 1.0), (2.0, 2.0)]
    out = _grid_with_box(0.6, 0.3, 0.2, 0.25, anchors)
    (det,) = decode_grid(out, anchors, 1, score=0.5)
    assert len(det.boxes) == 1 and float(det.scores[0]) > 0.99
    assert det.boxes[0].tolist() == pytest.approx([0.5, 0.175, 0.7, 0.425], abs=1e-4)


def test_region_loss_is_lowest_for_the_right_box_and_trains():
    anchors = [(1.0, 1.0), (2.0, 2.0)]
    target = torch.tensor([[[0, 0.6, 0.3, 0.2, 0.25]]])
    loss = RegionLoss(anchors, 1)
    right = loss(_grid_with_box(0.6, 0.3, 0.2, 0.25, anchors), target)
    wrong = loss(_grid_with_box(0.2, 0.8, 0.2, 0.25, anchors), target)
    assert float(right) < 0.1 < float(wrong)
    empty = loss(_grid_with_box(0.6, 0.3, 0.2, 0.25, anchors), torch.full((1, 1, 5), -1.0))
    assert float(empty) == pytest.approx(float(torch.sigmoid(torch.tensor(5.0))) ** 2, rel=1e-3)
    x = torch.zeros(1, 10, 4, 4, requires_grad=True)
    loss(x, target).backward()
    assert x.grad.abs().sum() > 0


def test_box_jitter_moves_boxes_with_the_pixels():
    from convlab.tasks.detection import BoxJitter

    torch.manual_seed(0)
    x = torch.zeros(8, 1, 64, 64)
    x[:, :, 16:32, 24:48] = 1.0  # a 24x16 white rectangle: cx 36, cy 24
    box = torch.tensor([[[0, 36 / 64, 24 / 64, 24 / 64, 16 / 64]]]).repeat(8, 1, 1)
    y, t = BoxJitter(0.2, hflip=0.5)(x, box)
    for img, (c, cx, cy, w, h) in zip(y[:, 0], t[:, 0].tolist()):
        if c < 0:
            continue  # pushed mostly out of the picture: dropped
        ys, xs = torch.nonzero(img > 0.5, as_tuple=True)
        ink = [xs.min() / 64, ys.min() / 64, (xs.max() + 1) / 64, (ys.max() + 1) / 64]
        got = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        assert got == pytest.approx([float(v) for v in ink], abs=1.5 / 64)


def test_kmeans_anchors_find_two_shapes():
    wh = torch.cat([torch.full((30, 2), 1.0) + 0.01 * torch.randn(30, 2),
                    torch.tensor([[4.0, 2.0]]).repeat(30, 1)])
    anchors = kmeans_anchors(wh, 2)
    assert anchors.flatten().tolist() == pytest.approx([1.0, 1.0, 4.0, 2.0], abs=0.05)
    with pytest.raises(DatasetError, match="at least 5 boxes"):
        kmeans_anchors(wh[:3], 5)


# ---------------------------------------------------------------------- YOLO folders

def _shapes_folder(root: Path, n: int = 24, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """A YOLO folder of bright squares (class 0) and dark-on-light bars (class 1) at
    random places, with exact boxes, in non-square images."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("square\nbar\n")
    w, h = size
    for k in range(n):
        img = np.full((h, w, 3), 40, np.uint8)
        lines = []
        for cls in (0, 1):
            bw, bh = (20, 20) if cls == 0 else (30, 10)
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            if any(abs(x - px) < 32 and abs(y - py) < 22 for px, py in [tuple(map(int, l.split()[5:]))
                                                                          for l in lines]):
                continue
            img[y:y + bh, x:x + bw] = (230, 230, 60) if cls == 0 else (60, 200, 255)
            lines.append(f"{cls} {(x + bw / 2) / w:.5f} {(y + bh / 2) / h:.5f} {bw / w:.5f} "
                         f"{bh / h:.5f} {x} {y}")
        Image.fromarray(img).save(root / "images" / f"im{k:02d}.png")
        (root / "labels" / f"im{k:02d}.txt").write_text(
            "".join(" ".join(l.split()[:5]) + "\n" for l in lines))
    return root


def test_yolo_folder_letterboxes_images_and_boxes(tmp_path):
    root = _shapes_folder(tmp_path / "shapes", n=3)
    data = load_dataset(root, size=64)
    assert data.shape == (3, 64, 64) and data.classes == ["square", "bar"]
    # a 96x64 image scaled to 64x43 and padded below: x fractions stay, y fractions shrink
    raw = [float(v) for v in (root / "labels" / "im00.txt").read_text().split()[:5]]
    row = data.labels[0, 0].tolist()
    assert row[1] == pytest.approx(raw[1], abs=1e-5)
    assert row[2] == pytest.approx(raw[2] * 64 * (64 / 96) / 64, abs=1e-5)
    assert row[4] == pytest.approx(raw[4] * (64 / 96), abs=1e-5)


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", r"im00.txt line 2: expected 5 fields"),
    ("0 0.5 1.3 0.2 0.2", r"im00.txt line 2: cy 1.3 is outside 0..1"),
    ("2 0.5 0.5 0.2 0.2", r"im00.txt line 2: class id 2 is out of range; valid: 0..1"),
    ("0 0.5 0.5 0 0.2", r"im00.txt line 2: the box has zero area"),
    ("x 0.5 0.5 0.2 0.2", r"im00.txt line 2: the class id must be an integer"),
    ("0 0.95 0.5 0.3 0.2", r"im00.txt line 2: the box reaches past the image's edge"),
])
def test_bad_label_lines_name_file_and_line(tmp_path, line, message):
    root = _shapes_folder(tmp_path / "bad", n=2)
    label = root / "labels" / "im00.txt"
    label.write_text(label.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset(root, size=64)


def test_an_image_without_labels_is_a_negative_said_so(tmp_path):
    root = _shapes_folder(tmp_path / "neg", n=3)
    (root / "labels" / "im01.txt").unlink()
    (root / "labels" / "im02.txt").write_text("")  # an explicit negative: no warning
    with pytest.warns(UserWarning, match=r"1 image\(s\) have no label file and were taken as "
                                         r"negatives \(no boxes\): im01.png"):
        data = load_dataset(root, size=64)
    assert (data.labels[1:, :, 0] < 0).all() and (data.labels[0, :, 0] >= 0).any()
    with pytest.raises(DatasetError, match="would be negatives"):
        load_dataset(root, size=64, strict=True)


def test_digit_boxes_is_listed_and_exact():
    from convlab.data.registry import DATASETS

    spec = DATASETS["digit-boxes"]
    assert spec.task == "detection" and spec.sizes == {"train": 3000, "test": 500}


# ------------------------------------------------------------ a run, end to end

def test_detection_run_trains_evaluates_predicts_exports_and_detects(tmp_path, capsys):
    root = _shapes_folder(tmp_path / "shapes", n=80, seed=1)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", str(root), "--model", "tiny_yolo_face", "--image-size", "96",
                     "--epochs", "30", "--batch-size", "8", "--lr", "0.002", "--val-split", "0.2",
                     "--out", str(run)]) == 0
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert len(epochs) == 30 and all("val_mAP50:" in e and "val_mAP50-95:" in e and " acc:" not in e
                                     for e in epochs)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["task"] == "detection" and len(meta["detection"]["anchors"]) == 5
    assert meta["preprocess"]["resize"] == "letterbox" and meta["classes"] == ["square", "bar"]
    assert meta["model"]["kwargs"]["detect"] is True
    assert meta["metrics"][-1]["val_acc"] > 0.5  # mAP50 of two easy shapes after 30 epochs

    assert main(["evaluate", str(run), str(root)]) == 0
    text = capsys.readouterr().out
    assert "mAP50" in text and "square" in text and "bar" in text

    image = root / "images" / "im00.png"
    assert main(["predict", str(run), str(image)]) == 0
    assert "box" in capsys.readouterr().out

    assert main(["export", str(run)]) == 0
    assert "same top-1: yes" in capsys.readouterr().out
    assert main(["detect", str(image), "--model", str(run), "--backend", "onnx", "--json"]) == 0
    onnx = json.loads(capsys.readouterr().out)
    assert main(["detect", str(image), "--model", str(run), "--json"]) == 0
    torch_boxes = json.loads(capsys.readouterr().out)
    assert [b["label"] for b in onnx[0]["boxes"]] == [b["label"] for b in torch_boxes[0]["boxes"]]
    assert main(["inspect", str(run)]) == 0
    assert "conv8" in capsys.readouterr().out
    assert main(["show", str(run), "kernels", "--out", str(tmp_path / "k")]) == 0

    # the other way round: a detection run is not a classifier
    from convlab.predict import Predictor
    with pytest.raises(CheckpointError, match="detection run"):
        Predictor(run)
    assert main(["classify", "--model", str(run), str(image)]) != 0
    assert "is a detection run: use convlab detect IMAGE --model" in capsys.readouterr().err


def test_a_classifier_run_is_refused_by_detect(tmp_path, capsys):
    from convlab.detect import load_detector
    from convlab.training import train

    data = load_dataset("digits").head(60)
    train(data, "mnist_linear", TrainConfig(epochs=1), out=tmp_path / "cls", verbose=False)
    with pytest.raises(CheckpointError, match="classification run; detect needs a detection run"):
        load_detector(tmp_path / "cls")
    Image.new("RGB", (64, 48)).save(tmp_path / "x.png")
    assert main(["detect", str(tmp_path / "x.png"), "--model", str(tmp_path / "cls")]) != 0
    assert "classification run; detect needs a detection run" in capsys.readouterr().err


def test_detect_options_are_checked(capsys):
    assert main(["detect", "nothing.jpg", "--size", "100"]) != 0
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["detect", "nothing.jpg", "--score", "2"]) != 0
    assert "--score must lie in 0..1" in capsys.readouterr().err
    task = DetectionTask(FACE_ANCHORS, 1)
    task.check_config(TrainConfig(augment=AugmentConfig(hflip=0.5, jitter=0.2)))  # box-aware, colour
    with pytest.raises(ConfigError, match="move or hide pixels without their boxes: rotate"):
        task.check_config(TrainConfig(augment=AugmentConfig(rotate=10)))


def test_json_keeps_paths_and_puts_each_box_on_a_line():
    from convlab.detect import Box, result_json

    text = result_json([("a[  b ].jpg", [Box(1.0, 2.0, 3.0, 4.0, 0.5, "face")])])
    assert json.loads(text)[0]["image"] == "a[  b ].jpg"
    assert '{"box": [1.0, 2.0, 3.0, 4.0], "score": 0.5, "label": "face"}' in text


def test_save_labels_writes_a_yolo_folder_that_loads(tmp_path, capsys):
    photo = face_api_folder() / "demo" / "sample2.jpg"
    out = tmp_path / "auto"
    assert main(["detect", str(photo), "--save-labels", str(out), "--out", str(tmp_path / "drawn")]) == 0
    assert (tmp_path / "drawn" / "sample2.jpg").is_file()
    data = load_dataset(out, size=224)
    assert data.classes == ["face"] and len(data.rows()) == 1


def test_detection_trains_and_evaluates_on_two_processes(tmp_path):
    """Under torchrun the ranks gather their boxes for one mAP (7 validation images:
    the ranks hold 4 and 3), and the closing evaluation on rank 0 alone does not wait
    for the others."""
    import subprocess
    import sys

    root = _shapes_folder(tmp_path / "shapes", n=28, seed=2)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "convlab", "train", str(root), "--model",
                           "tiny_yolo_face", "--image-size", "64", "--epochs", "2",
                           "--batch-size", "8", "--val-split", "0.25", "--nproc", "2",
                           "--device", "cpu", "--out", str(run)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("val_mAP50:") == 2 and "run saved in" in proc.stdout
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["task"] == "detection" and evaluation["n"] == 7
