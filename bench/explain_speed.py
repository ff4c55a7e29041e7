"""Class-activation maps fast enough for a live preview? Grad-CAM on the teach app's
backbone (EfficientNet-Lite0, bundled ImageNet weights) at 224x224, one photo at a time.

Measured in one run, alternating, best of --rounds: a plain forward pass (eager torch,
inference mode: the reference), Grad-CAM for the predicted class as `convlab explain`
computes it (a forward for the prediction, then captum's LayerGradCam: a forward with
gradients from the layer on and a backward to it), Grad-CAM for a class already known
(the preview knows it from its own prediction), and occlusion (a 7x7 grid of grey
squares, a forward pass per square, batched). Prints one JSON line: maps per second and
the ratio of each method's time to the forward pass's (`gradcam_over_forward`).

    .venv/bin/python bench/explain_speed.py [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5, help="maps per timed round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = ap.parse_args()

    import torch
    from skimage import data as skdata

    from convlab.analysis.attribution import attribution_copy, cam_layer, grad_cam, occlusion
    from convlab.models import create_model, default_preprocess

    if args.threads:
        torch.set_num_threads(args.threads)
    model = attribution_copy(create_model("efficientnet_lite0", 1000, pretrained=True))
    pre, _ = default_preprocess("efficientnet_lite0", 3)
    x = pre(torch.from_numpy(skdata.chelsea().copy()).permute(2, 0, 1)[None])   # (1, 3, 224, 224)
    layer = cam_layer(model, (3, 224, 224))          # found once, as the preview does
    with torch.inference_mode():
        target = int(model(x).argmax())

    def forward():
        with torch.inference_mode():
            model(x)

    def cam_predicted():
        grad_cam(model, x, layer=layer)

    def cam_known():
        grad_cam(model, x, [target], layer=layer)

    def timed(fn, n):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n

    ways = {"forward": forward, "gradcam": cam_predicted, "gradcam_known_class": cam_known}
    for fn in ways.values():
        fn()   # warm-up
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(args.rounds):
        for name, fn in ways.items():
            best[name] = min(best[name], timed(fn, args.repeat))
    occ = min(timed(lambda: occlusion(model, x, [target], window=32, stride=32), 1)
              for _ in range(2))
    result = {"bench": "explain_speed", "model": "efficientnet_lite0", "input": "3x224x224",
              "layer": layer, "threads": torch.get_num_threads(),
              "forward_per_s": round(1 / best["forward"], 2),
              "gradcam_maps_per_s": round(1 / best["gradcam"], 2),
              "gradcam_known_class_maps_per_s": round(1 / best["gradcam_known_class"], 2),
              "occlusion_7x7_maps_per_s": round(1 / occ, 3),
              "gradcam_over_forward": round(best["gradcam"] / best["forward"], 2),
              "gradcam_known_class_over_forward": round(best["gradcam_known_class"] / best["forward"], 2),
              "occlusion_7x7_over_forward": round(occ / best["forward"], 1),
              "load_average": round(os.getloadavg()[0], 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
