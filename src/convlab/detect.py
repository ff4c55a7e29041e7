"""Detector: boxes for images of any size, from the lecture's pretrained TinyYOLOv2 face
detector (`tiny_face`) or from a detection run directory, in eager torch or ONNX Runtime.

    det = load_detector("tiny_face")              # face-api's weights, offline
    boxes = det.detect(decode_image("group.jpg"))  # [Box(x1, y1, x2, y2, score, label)]

Each image is scaled so its longer side is `size` pixels and padded at the bottom and
right to multiples of 32 (the grid's cell), so a 320x240 frame runs as 320x256, not as
a 320x320 square; the boxes come back in the original image's pixels.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Preprocess, decode_image
from .data.images import letterbox_shape
from .errors import CheckpointError, ConfigError, ModelError
from .tasks.detection import DEFAULT_IOU, DEFAULT_SCORE, DetectionTask

__all__ = ["Box", "Detector", "load_detector", "DEFAULT_MODEL", "DETECT_SIZES", "draw_boxes",
           "yolo_lines", "result_json", "check_options"]

DEFAULT_MODEL = "tiny_face"
DETECT_SIZES = range(32, 2049, 32)
_CELL = 32


@dataclass
class Box:
    """One detection in the original image's pixels."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    label: str

    def to_dict(self) -> dict:
        return {"box": [round(v, 1) for v in (self.x1, self.y1, self.x2, self.y2)],
                "score": round(self.score, 4), "label": self.label}


class Detector:
    """A detection network with its anchors, classes and input normalisation.

    `model` maps a normalised (N, C, H, W) image, H and W multiples of 32, to the YOLO
    grid; `backend='onnx'` runs the same network under ONNX Runtime (exported once,
    with dynamic height and width, into `onnx_file`).
    """

    def __init__(self, model: nn.Module, task: DetectionTask, classes: list[str],
                 preprocess: Preprocess, *, size: int = 416, score: float = DEFAULT_SCORE,
                 iou: float = DEFAULT_IOU, backend: str = "torch",
                 onnx_file: str | os.PathLike | None = None, threads: int | None = None,
                 name: str = "") -> None:
        check_options(size, score, iou)
        if backend not in ("torch", "onnx"):
            raise ConfigError(f"unknown backend '{backend}'; valid: torch, onnx")
        self.model = model.eval()
        self.task, self.classes, self.preprocess = task, list(classes), preprocess
        self.size, self.score, self.iou = size, score, iou
        self.backend, self.name = backend, name
        self._session = None
        self._lock = threading.Lock()
        if backend == "onnx":
            if onnx_file is None:
                raise ConfigError("the onnx backend needs onnx_file (where the exported model is "
                                  "or goes)")
            self._session = _onnx_session(model, preprocess, Path(onnx_file), threads)
        # the first call loads torchvision's NMS and warms the engine: done here, not in
        # the first image's time
        self.detect(torch.zeros(preprocess.channels, _CELL, _CELL, dtype=torch.uint8))

    @property
    def channels(self) -> int:
        return self.preprocess.channels

    def input(self, image: torch.Tensor, size: int | None = None) -> tuple[torch.Tensor, float]:
        """uint8 (C, H, W) -> (normalised (1, C, H', W'), scale) by the letterbox rule:
        the scaled image normalised into the top-left of a canvas of black (normalised)
        pixels, in one pass (a webcam frame at its own size is not resized at all)."""
        from .data import resize_images, to_channels

        x = to_channels(image[None], self.channels)
        nh, nw, th, tw, scale = letterbox_shape(*x.shape[-2:], size or self.size, _CELL)
        x = resize_images(x, (nh, nw), self.preprocess.interpolation)
        # numpy, single-threaded: torch would split these small element-wise passes over
        # its threads, which costs tens of ms when another process holds a core
        mean = np.asarray(self.preprocess.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.preprocess.std, np.float32).reshape(-1, 1, 1)
        out = np.empty((1, self.channels, th, tw), np.float32)
        out[0] = -mean / std
        out[0, :, :nh, :nw] = x[0].numpy() * (1 / (255.0 * std)) - mean / std
        return torch.from_numpy(out), scale

    @torch.inference_mode()
    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> the raw output grid."""
        if self._session is not None:
            out = self._session.run(None, {"input": x.float().contiguous().numpy()})[0]
            return torch.from_numpy(out)
        return self.model(x).float()

    def detect(self, image: torch.Tensor | str | os.PathLike, *, size: int | None = None,
               score: float | None = None, iou: float | None = None) -> list[Box]:
        """Boxes of one image (uint8 (C, H, W), or a file), best first, in its pixels."""
        if not isinstance(image, torch.Tensor):
            image = decode_image(image, 3)
        check_options(size or self.size, self.score if score is None else score,
                      self.iou if iou is None else iou)
        x, scale = self.input(image, size)
        with self._lock:  # one ONNX session / module, used from server threads too
            out = self.grid(x)
        det = self.task.decode(out, score=self.score if score is None else score,
                               iou=self.iou if iou is None else iou)[0]
        h, w = x.shape[-2:]
        pix = det.boxes * torch.tensor([w, h, w, h]) / scale
        ih, iw = image.shape[-2:]
        pix[:, 0::2] = pix[:, 0::2].clamp(0, iw)
        pix[:, 1::2] = pix[:, 1::2].clamp(0, ih)
        # a box that lay in the letterbox's padding has no area left in the image
        return [Box(*map(float, b), float(s), self.classes[int(k)])
                for b, s, k in zip(pix.tolist(), det.scores, det.labels)
                if b[2] > b[0] and b[3] > b[1]]


def check_options(size: int, score: float, iou: float) -> None:
    """Raise ConfigError unless size is a multiple of 32 and score, iou lie in 0..1."""
    if size not in DETECT_SIZES:
        raise ConfigError(f"--size must be a multiple of 32 from 32 to 2048 (the grid's cell "
                          f"is 32 pixels); got {size}")
    if not 0.0 <= score <= 1.0:
        raise ConfigError(f"--score must lie in 0..1; got {score}")
    if not 0.0 < iou <= 1.0:
        raise ConfigError(f"--iou must lie in (0, 1]; got {iou}")


def _onnx_session(model: nn.Module, preprocess: Preprocess, path: Path, threads: int | None):
    """An ONNX Runtime session of `model` with dynamic batch, height and width: the file
    at `path` when it exists, else exported there first (atomically)."""
    from .export import OnnxModel, export_onnx_file
    from .files import atomic_path

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            export_onnx_file(model, torch.zeros(1, preprocess.channels, 224, 224), tmp,
                             dynamic_size=True)
    return OnnxModel(path, threads=threads).session


def _face_detector(**kw) -> Detector:
    from .files import cache_root
    from .models import create_model
    from .models.detector import FACE_ANCHORS, FACE_MEAN, face_weights_id, load_face_api

    model = load_face_api(create_model("tiny_yolo_face", num_classes=1, detect=True,
                                       anchors=FACE_ANCHORS, batchnorm=False))
    pre = Preprocess(3, (416, 416), "letterbox", mean=FACE_MEAN, std=(1.0, 1.0, 1.0))
    # its ONNX export, made once per weights and torch version
    onnx_file = cache_root() / "detect" / f"{DEFAULT_MODEL}-{face_weights_id()}-torch{torch.__version__}.onnx"
    return Detector(model, DetectionTask(FACE_ANCHORS, 1), ["face"], pre, name=DEFAULT_MODEL,
                    onnx_file=onnx_file, **kw)


def load_detector(model: str | os.PathLike = DEFAULT_MODEL, *, size: int | None = None,
                  score: float = DEFAULT_SCORE, iou: float = DEFAULT_IOU, backend: str = "torch",
                  threads: int | None = None) -> Detector:
    """`tiny_face` (the lecture's network with face-api's weights) or a detection run
    directory. With backend 'onnx' a run uses RUN/model.onnx (made by `convlab export`,
    or here on first use); tiny_face is exported once into ~/.cache/convlab/detect."""
    if os.fspath(model) == DEFAULT_MODEL:
        return _face_detector(size=size or 416, score=score, iou=iou, backend=backend,
                              threads=threads)
    from .checkpoint import load_run
    from .export import EXPORT_FILES
    from .tasks import task_of

    path = Path(model)
    if not path.is_dir():
        raise ModelError(f"--model: '{model}' is neither '{DEFAULT_MODEL}' nor a run directory")
    run = load_run(path)
    task = task_of(run.meta)
    if not isinstance(task, DetectionTask):
        raise CheckpointError(f"{path} is a {task.name} run; detect needs a detection run "
                              f"(train one on a detection dataset), or use: convlab predict {path}")
    if backend == "onnx" and not (path / EXPORT_FILES["onnx"]).is_file():
        from .export import export_run
        export_run(run, "onnx")  # as `convlab export RUN` does: parity-checked, with meta
    return Detector(run.model, task, run.classes, run.preprocess,
                    size=size or run.preprocess.size[0], score=score, iou=iou, backend=backend,
                    onnx_file=path / EXPORT_FILES["onnx"], threads=threads, name=str(path))


def draw_boxes(image: torch.Tensor, boxes: list[Box], path: str | os.PathLike) -> None:
    """Save `image` (uint8 (C, H, W)) with its boxes and their labels drawn, via Pillow."""
    from PIL import Image, ImageDraw

    arr = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    img = Image.fromarray(arr.permute(1, 2, 0).numpy())
    from PIL import ImageFont

    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 400))
    font = ImageFont.load_default(size=max(10, round(max(img.size) / 60)))
    for b in boxes:
        draw.rectangle([b.x1, b.y1, b.x2, b.y2], outline=(255, 40, 40), width=width)
        text = f"{b.label} {b.score:.2f}"
        x0, y0, x1, y1 = draw.textbbox((b.x1, b.y1), text, font=font)
        top = max(0, b.y1 - (y1 - y0) - 2 * width)
        draw.rectangle([b.x1, top, b.x1 + (x1 - x0) + 2 * width, top + (y1 - y0) + 2 * width],
                       fill=(255, 40, 40))
        draw.text((b.x1 + width, top + width - (y0 - b.y1)), text, fill=(255, 255, 255), font=font)
    from .files import atomic_path
    with atomic_path(Path(path)) as tmp:
        img.save(tmp, format="PNG" if Path(path).suffix.lower() == ".png" else "JPEG", quality=92)


def yolo_lines(boxes: list[Box], classes: list[str], width: int, height: int) -> str:
    """The boxes as a YOLO label file: 'class cx cy w h' per line, normalised to 0..1."""
    out = []
    for b in boxes:
        cx, cy = (b.x1 + b.x2) / 2 / width, (b.y1 + b.y2) / 2 / height
        out.append(f"{classes.index(b.label)} {cx:.6f} {cy:.6f} {(b.x2 - b.x1) / width:.6f} "
                   f"{(b.y2 - b.y1) / height:.6f}")
    return "".join(line + "\n" for line in out)


def result_json(results: list[tuple[str, list[Box]]]) -> str:
    """`convlab detect --json`: [{"image": PATH, "boxes": [{"box", "score", "label"}]}]."""
    # each box on one line: indent the document around placeholders, then put them in
    rows = []

    def slot(b: Box) -> str:
        rows.append(json.dumps(b.to_dict()))
        return f"\0box{len(rows) - 1}\0"
    text = json.dumps([{"image": p, "boxes": [slot(b) for b in boxes]} for p, boxes in results],
                      indent=1)
    return re.sub(r'"\\u0000box(\d+)\\u0000"', lambda m: rows[int(m.group(1))], text)

