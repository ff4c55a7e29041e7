"""YOLO-format detection folders: read them into a DetectionSet, write label files.

    FOLDER/images/<name>.jpg     any image Pillow reads
    FOLDER/labels/<name>.txt     one box per line: class cx cy w h (0..1 of the image)
    FOLDER/classes.txt           optional: one class name per line (else 0, 1, ...)

An empty label file is a valid negative image. With images/train and images/val (and
labels/train, labels/val) the folder has a training and a test split, as Ultralytics
lays it out. Every label line is checked; an error names the file and the line.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..errors import DatasetError
from .detectionset import DetectionSet, pad_boxes
from .images import decode_image, letterbox, list_images

__all__ = ["is_yolo_folder", "load_yolo_folder", "read_label_file", "read_classes", "has_split",
           "YOLO_LAYOUT"]

YOLO_LAYOUT = "FOLDER/images/*.jpg with FOLDER/labels/*.txt ('class cx cy w h' per line, 0..1)"
_TEST_SPLITS = ("val", "test")


def is_yolo_folder(path: str | os.PathLike) -> bool:
    """A folder with images/ and labels/ subfolders."""
    p = Path(path)
    return (p / "images").is_dir() and (p / "labels").is_dir()


def _split_dirs(root: Path, split: str) -> tuple[Path, Path] | None:
    """(images, labels) folders of `split`: the flat layout is all 'train'."""
    images, labels = root / "images", root / "labels"
    if (images / "train").is_dir():
        names = ["train"] if split == "train" else list(_TEST_SPLITS)
        for n in names:
            if (images / n).is_dir():
                return images / n, labels / n
        return None
    return (images, labels) if split == "train" else None


def has_split(root: str | os.PathLike, split: str) -> bool:
    """Whether the folder has that split ('train', or 'test' from images/val or test)."""
    return _split_dirs(Path(root), split) is not None


def read_classes(root: Path) -> list[str] | None:
    """The names in FOLDER/classes.txt, one per line, or None without the file."""
    f = root / "classes.txt"
    if not f.is_file():
        return None
    names = [line.strip() for line in f.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{f}: no class names (one per line)")
    return names


def _largest_class(labels: Path) -> int:
    """The largest class id in any label file under `labels` (0 when there is none)."""
    top = 0
    for f in labels.rglob("*.txt"):
        for line in f.read_text().splitlines():
            fields = line.split()
            if fields and fields[0].lstrip("-").isdigit():
                top = max(top, int(fields[0]))
    return top


def read_label_file(path: Path, num_classes: int | None) -> torch.Tensor:
    """A YOLO label file -> rows (K, 5) [class, cx, cy, w, h]; DatasetError naming the
    file and line for a wrong field count, a non-number, a class id out of range,
    coordinates outside 0..1 or a box of zero area."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path} line {n}"
        if len(fields) != 5:
            raise DatasetError(f"{where}: expected 5 fields 'class cx cy w h', found "
                               f"{len(fields)}: '{line.strip()[:80]}'")
        try:
            cls = int(fields[0])
        except ValueError:
            raise DatasetError(f"{where}: the class id must be an integer; got '{fields[0]}'") from None
        try:
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise DatasetError(f"{where}: cx cy w h must be numbers; got "
                               f"'{' '.join(fields[1:])}'") from None
        if cls < 0 or (num_classes is not None and cls >= num_classes):
            valid = (f"0..{num_classes - 1} ({num_classes} class{'es' if num_classes != 1 else ''} in "
                     f"classes.txt)" if num_classes else "0 or more")
            raise DatasetError(f"{where}: class id {cls} is out of range; valid: {valid}")
        for name, v in (("cx", cx), ("cy", cy), ("w", w), ("h", h)):
            if not 0.0 <= v <= 1.0:
                raise DatasetError(f"{where}: {name} {v:g} is outside 0..1 (YOLO coordinates "
                                   f"are fractions of the image's width and height)")
        if w * h <= 0:
            raise DatasetError(f"{where}: the box has zero area (w {w:g}, h {h:g})")
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if min(x1, y1) < -1e-4 or max(x2, y2) > 1 + 1e-4:
            raise DatasetError(f"{where}: the box reaches past the image's edge (x {x1:.4g}.."
                               f"{x2:.4g}, y {y1:.4g}..{y2:.4g}); clip it to 0..1")
        rows.append([cls, cx, cy, w, h])
    return torch.tensor(rows, dtype=torch.float32).view(-1, 5)


def load_yolo_folder(root: str | os.PathLike, split: str = "train", *, size: int = 224,
                     channels: int = 3, strict: bool = False) -> DetectionSet:
    """A YOLO-format folder's split as a DetectionSet, every image letterboxed to
    `size` x `size` (longer side scaled to size, bottom/right padded) with its boxes
    moved to match. An image without a label file is taken as a negative (no boxes),
    with a warning naming it (`strict=True`: an error)."""
    root = Path(root)
    dirs = _split_dirs(root, split)
    if dirs is None:
        raise DatasetError(f"{root}: no '{split}' split; expected {YOLO_LAYOUT}"
                           + (" or images/val for a test split" if split != "train" else ""))
    img_dir, lab_dir = dirs
    classes = read_classes(root)
    files = list_images(img_dir)
    if not files:
        raise DatasetError(f"{img_dir}: no images; expected {YOLO_LAYOUT}")
    images, boxes, unlabelled = [], [], []
    for f in files:
        label = lab_dir / f"{f.stem}.txt"
        if label.is_file():
            rows = read_label_file(label, len(classes) if classes else None)
        else:
            unlabelled.append(f.name)
            rows = torch.zeros(0, 5)
        img = decode_image(f, channels)
        h, w = img.shape[-2:]
        x, scale = letterbox(img[None], size)
        images.append(x[0])
        if len(rows):  # fractions of (w, h) -> fractions of the size x size square
            rows = rows.clone()
            rows[:, [1, 3]] *= w * scale / size
            rows[:, [2, 4]] *= h * scale / size
        boxes.append(rows)
    if unlabelled:
        msg = (f"{lab_dir}: {len(unlabelled)} image(s) have no label file and were taken as "
               f"negatives (no boxes): {', '.join(unlabelled[:5])}"
               + (" ..." if len(unlabelled) > 5 else "")
               + "; an empty .txt file marks a negative explicitly")
        if strict:
            raise DatasetError(msg.replace("were taken as negatives", "would be negatives"))
        warnings.warn(msg, stacklevel=2)
    targets = pad_boxes(boxes)
    if classes is None:  # every split's labels count, so train and val get the same classes
        classes = [str(i) for i in range(_largest_class(root / "labels") + 1)]
    return DetectionSet(torch.stack(images), targets, classes, str(root),
                        {"source": "yolo", "root": str(root), "split": split, "size": size})
