"""Face detection speed on 320x240 frames: the tiny_face detector's full detect() in
ONNX Runtime and eager torch at input sizes 224, 320 and 416, against YuNet (yuface,
libfacedetection's C++ detector) on the same frames.

The frames are twelve 320x240 views of face-api's six demo group photos: each photo's
centre 4:3 crop (3 to 5 faces of 35 to 50 pixels), and a 4:3 crop half the photo wide
centred on its labelled faces (convlab.data.facesets; fewer faces, twice the size),
both scaled down to 320x240 (antialiased bilinear). A pass runs one detector over every
frame --reps times; its frames per second is the full Detector.detect (letterbox,
normalisation, network, decoding, NMS, boxes in the frame's pixels) on uint8 (3, H, W)
tensors, and yuface.detect on the same frames as BGR arrays, its native input. The
detectors take turns pass by pass for --rounds rounds (the first one of a round moves
along each round), and each reports the median of its rounds, since this shared
machine drifts by 20-30%; `onnx_320_vs_yuface_ratio` is the median of the per-round
ratios.

Threads: our ONNX Runtime session runs 2 intra-op threads, torch its default
(torch.get_num_threads()). yuface parallelises with the OpenMP runtime bundled in its
wheel, whose default is one thread per core; it runs at that default and at 1 thread
(set through the bundled libgomp), and `yuface_fps` is the faster of the two in each
round, the stricter reference. `onnx_320_parts_ms` splits ONNX detect() at 320 into
Detector.input (letterbox + normalise), Detector.grid (the ONNX Runtime call) and
the task's decode (boxes + NMS), medians in milliseconds per frame.

Targets: ONNX Runtime at 320 >= 100 frames/s and >= 0.5x yuface's rate.

    .venv/bin/python bench/detect_speed.py [--rounds 7] [--reps 3]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time
from pathlib import Path

SIZES = (224, 320, 416)
FRAME = (240, 320)  # height, width


def frames():
    """Twelve uint8 (3, 240, 320) views of the demo photos: centre crop, faces crop."""
    from convlab.data import decode_image, resize_images
    from convlab.data.facesets import load_face_demo
    from convlab.models.detector import face_api_dir

    out = []
    for path, boxes in load_face_demo(face_api_dir()):
        image = decode_image(path, 3)
        h, w = image.shape[-2:]
        cw = min(w, h * 4 // 3)
        crops = [((w - cw) // 2, 0, cw)]
        # half the photo's width, centred on its faces: fewer, larger faces
        fw = w // 2
        cx, cy = ((boxes[:, :2] + boxes[:, 2:]) / 2).mean(0).tolist()
        fx = int(min(max(0, cx - fw / 2), w - fw))
        fy = int(min(max(0, cy - fw * 3 / 8), h - fw * 3 // 4))
        crops.append((fx, fy, fw))
        for x, y, cw_ in crops:
            crop = image[:, y:y + cw_ * 3 // 4, x:x + cw_]
            out.append(resize_images(crop[None], FRAME)[0].contiguous())
    return out


def yuface_threads():
    """(get, set) of the OpenMP thread count of yuface's bundled runtime, for the
    calling thread."""
    import yuface

    libs = Path(yuface.__file__).resolve().parent.parent / "yuface.libs"
    gomp = ctypes.CDLL(str(next(libs.glob("libgomp*"))))
    return gomp.omp_get_max_threads, gomp.omp_set_num_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3, help="passes over the frames per timing")
    args = ap.parse_args()

    import numpy as np
    import torch
    import yuface

    from convlab.detect import load_detector

    views = frames()
    bgr = [np.ascontiguousarray(f.permute(1, 2, 0).numpy()[:, :, ::-1]) for f in views]
    onnx = load_detector("tiny_face", backend="onnx", threads=2)
    eager = load_detector("tiny_face", backend="torch")
    get_threads, set_threads = yuface_threads()
    yuface_default = get_threads()

    def ours(det, size):
        def run():
            for f in views:
                det.detect(f, size=size)
        return run

    def yunet(threads):
        def run():
            set_threads(threads)
            for f in bgr:
                yuface.detect(f)
            set_threads(yuface_default)
        return run

    runs = {f"{name}_{s}": ours(det, s) for name, det in (("onnx", onnx), ("torch", eager))
            for s in SIZES}
    runs.update({f"yuface_{n}thread": yunet(n) for n in sorted({1, yuface_default})})
    n_frames = len(views) * args.reps

    def fps(run) -> float:
        t = time.perf_counter()
        for _ in range(args.reps):
            run()
        return n_frames / (time.perf_counter() - t)

    for run in runs.values():  # warm-up
        run()
    samples = {k: [] for k in runs}
    ratios = []
    names = list(runs)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(fps(runs[name]))
        yu = max(samples[k][-1] for k in samples if k.startswith("yuface"))
        ratios.append(samples["onnx_320"][-1] / yu)
    med = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    yu_best = [max(v) for v in zip(*(samples[k] for k in samples if k.startswith("yuface")))]

    # where ONNX detect() at 320 spends a frame
    def per_frame_ms(fn) -> float:
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for _ in range(args.reps):
                for f in views:
                    fn(f)
            times.append((time.perf_counter() - t) / n_frames * 1e3)
        return round(statistics.median(times), 3)

    inputs = {id(f): onnx.input(f, 320)[0] for f in views}
    grids = {id(f): onnx.grid(inputs[id(f)]) for f in views}
    parts = {"detect": per_frame_ms(lambda f: onnx.detect(f, size=320)),
             "input": per_frame_ms(lambda f: onnx.input(f, 320)),
             "grid": per_frame_ms(lambda f: onnx.grid(inputs[id(f)])),
             "decode": per_frame_ms(lambda f: onnx.task.decode(grids[id(f)], score=onnx.score,
                                                               iou=onnx.iou))}
    boxes = {"onnx_320": sum(len(onnx.detect(f, size=320)) for f in views),
             "yuface": sum(len(yuface.detect(f)[0]) for f in bgr)}
    print(json.dumps({
        "bench": "detect_speed", "frames": f"{len(views)} x 320x240 views of face-api's demo photos",
        "rounds": args.rounds, "reps": args.reps,
        "fps": {k: v for k, v in med.items() if not k.startswith("yuface")},
        "yuface_fps": round(statistics.median(yu_best), 1),
        "yuface_fps_by_threads": {k.split("_")[1]: v for k, v in med.items() if k.startswith("yuface")},
        "onnx_320_vs_yuface_ratio": round(statistics.median(ratios), 3),
        "onnx_320_vs_torch_320_ratio": round(med["onnx_320"] / med["torch_320"], 3),
        "target_fps": 100, "target_ratio": 0.5,
        "onnx_320_parts_ms": parts,
        "boxes_on_frames": boxes,
        "ort_threads": 2, "torch_threads": torch.get_num_threads(),
        "yuface_default_threads": yuface_default,
        "load_average": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
