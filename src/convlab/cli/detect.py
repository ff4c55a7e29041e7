"""`convlab detect`: boxes in photos with the lecture's TinyYOLOv2 face detector or a
detection run; JSON, drawn pictures, or YOLO label files to correct and train on."""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

__all__ = ["register"]


def cmd_detect(args: argparse.Namespace) -> int:
    from ..data import decode_image
    from ..detect import check_options, draw_boxes, load_detector, result_json, yolo_lines
    from ..errors import ConfigError

    if args.size is not None or args.score is not None:
        check_options(args.size or 416, 0.5 if args.score is None else args.score, args.iou)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"no such image file: {', '.join(missing[:3])}")
    det = load_detector(args.model, size=args.size, score=0.5 if args.score is None else args.score,
                        iou=args.iou, backend=args.backend)
    out = Path(args.out) if args.out else None
    labels = Path(args.save_labels) if args.save_labels else None
    if labels is not None:
        (labels / "images").mkdir(parents=True, exist_ok=True)
        (labels / "labels").mkdir(parents=True, exist_ok=True)
        (labels / "classes.txt").write_text("".join(c + "\n" for c in det.classes))
    results, seconds = [], 0.0
    for path in args.images:
        image = decode_image(path, 3)
        t0 = time.perf_counter()
        boxes = det.detect(image)
        seconds += time.perf_counter() - t0
        results.append((path, boxes))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            draw_boxes(image, boxes, out / f"{Path(path).stem}.jpg")
        if labels is not None:
            name = Path(path).name
            if not (labels / "images" / name).exists():
                shutil.copy2(path, labels / "images" / name)
            h, w = image.shape[-2:]
            (labels / "labels" / f"{Path(path).stem}.txt").write_text(
                yolo_lines(boxes, det.classes, w, h))
        if not args.json:
            found = ", ".join(f"{b.label} {b.score:.2f} at [{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, "
                              f"{b.y2:.0f}]" for b in boxes)
            print(f"{path}: {len(boxes)} box{'es' if len(boxes) != 1 else ''}"
                  + (f": {found}" if boxes else ""))
    if args.json:
        print(result_json(results))
    else:
        n = len(args.images)
        k = sum(len(b) for _, b in results)
        print(f"{det.name} ({det.backend}, {det.size}px): {k} box{'es' if k != 1 else ''} "
              f"in {n} image{'s' if n != 1 else ''}, {1000 * seconds / n:.0f} ms per image")
        if out is not None:
            print(f"pictures with boxes in {out}")
        if labels is not None:
            print(f"YOLO labels in {labels} (correct them, then: convlab train {labels} "
                  f"--model tiny_yolo_face --pretrained)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="find faces (or a detection run's classes) in photos",
                       description="Detect objects with the lecture's TinyYOLOv2: by default the "
                       "face detector with the weights of the npm package @vladmandic/face-api "
                       "(offline), or a detection run trained with convlab train. Boxes are in "
                       "the original image's pixels.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size)")
    p.add_argument("--model", default="tiny_face",
                   help="tiny_face (the pretrained face detector, default) or a detection run directory")
    p.add_argument("--size", type=int,
                   help="longer image side fed to the network, a multiple of 32 (default 416 for "
                        "tiny_face, a run's training size for a run); larger finds smaller objects")
    p.add_argument("--score", type=float, help="smallest score of a box shown (default 0.5)")
    p.add_argument("--iou", type=float, default=0.4,
                   help="non-maximum suppression: boxes overlapping a better one by more "
                        "than this IoU are dropped (default 0.4)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON list: [{"image": PATH, "boxes": [{"box": [x1, y1, x2, y2], '
                        '"score": S, "label": NAME}]}]')
    p.add_argument("--out", help="folder for each image drawn with its boxes (NAME.jpg)")
    p.add_argument("--save-labels", metavar="DIR",
                   help="write a YOLO-format folder (images/, labels/*.txt, classes.txt) of the "
                        "detections, to correct by hand and train on")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch, or onnx: ONNX Runtime (a run uses RUN/model.onnx)")
    p.set_defaults(run=cmd_detect)
