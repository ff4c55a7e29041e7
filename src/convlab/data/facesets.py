"""Real photos with hand-checked face boxes: the six group photos of face-api's demo.

The photos stay in the npm package @vladmandic/face-api@1.7.15 (installed by `make venv`,
found by convlab.models.detector.face_api_dir, which this module cannot import: models
imports data, and the layers allow no cycle); only their face boxes live here, in
face_api_demo.json, as x1 y1 x2 y2 in the photos' own pixels. The boxes are tight face
boxes in WIDER FACE's convention (hairline to chin, cheek to cheek, ears left out):
proposed by a detector and checked, face by face, by eye.

    from convlab.models.detector import face_api_dir
    for path, boxes in load_face_demo(face_api_dir()):   # boxes: float (K, 4)
        ...
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import DatasetError

__all__ = ["FACE_DEMO_LABELS", "load_face_demo"]

FACE_DEMO_LABELS = Path(__file__).with_name("face_api_demo.json")


def load_face_demo(folder: str | os.PathLike) -> list[tuple[Path, torch.Tensor]]:
    """(image path, face boxes float (K, 4) x1 y1 x2 y2 in its pixels) of every labelled
    demo photo, in file-name order. `folder` is the face-api package, as
    convlab.models.detector.face_api_dir() finds it (or raises NotFound with the install
    line); DatasetError when a labelled photo is not in it."""
    labels = json.loads(FACE_DEMO_LABELS.read_text())["images"]
    out = []
    for name in sorted(labels):
        path = Path(folder) / "demo" / name
        if not path.is_file():
            raise DatasetError(f"{path}: the labelled demo photo is missing from the face-api "
                               f"package in {folder}; reinstall it (make venv)")
        boxes = torch.tensor(labels[name], dtype=torch.float32).reshape(-1, 4)  # (K, 4)
        out.append((path, boxes))
    return out
