"""Prediction speed: ONNX Runtime versus eager torch on the same exported run.

A finetune-shaped run (EfficientNet-Lite0 with a new 3-class classifier, bundled
backbone weights) is saved, exported to ONNX with the parity check, and both
Predictor backends score the same preprocessed batches of 224x224 images, alternating,
best of --rounds, at batch 1 and batch 32. Prints one JSON line; `ratio_b1` and
`ratio_b32` are ONNX Runtime's images/s over torch's (eager, channels_last, inference
mode) measured in the same run.

    .venv/bin/python bench/onnx_speed.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from convlab.checkpoint import save_run
    from convlab.embed import backbone_preprocess
    from convlab.export import OnnxModel, export_run
    from convlab.models import pretrained_model

    run_dir = tempfile.mkdtemp(prefix="onnx_speed-")
    model = pretrained_model("efficientnet_lite0", num_classes=3).eval()
    pre = backbone_preprocess("efficientnet_lite0")
    save_run(run_dir, model, {"model": {"name": "efficientnet_lite0", "kwargs": {"num_classes": 3}},
                              "classes": ["a", "b", "c"], "preprocess": pre.to_dict()})
    exported = export_run(run_dir, "onnx")
    onnx = OnnxModel(exported.path)
    cl = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    x32 = pre(torch.randint(0, 256, (32, 3, 224, 224), dtype=torch.uint8, generator=gen))
    result = {"bench": "onnx_speed", "model": "efficientnet_lite0", "threads": torch.get_num_threads(),
              "parity_max_abs_prob_diff": exported.max_abs_diff}
    for batch in (1, 32):
        x = x32[:batch]
        xc = x.contiguous(memory_format=torch.channels_last)

        def run_torch():
            t = time.perf_counter()
            with torch.inference_mode():
                for _ in range(32 // batch):
                    cl(xc)
            return time.perf_counter() - t

        def run_onnx():
            t = time.perf_counter()
            for _ in range(32 // batch):
                onnx.logits(x)
            return time.perf_counter() - t

        run_torch(), run_onnx()  # warm-up
        bt = bo = float("inf")
        for _ in range(args.rounds):
            bt = min(bt, run_torch())
            bo = min(bo, run_onnx())
        result[f"torch_images_per_s_b{batch}"] = round(32 / bt, 2)
        result[f"onnx_images_per_s_b{batch}"] = round(32 / bo, 2)
        result[f"ratio_b{batch}"] = round(bt / bo, 3)
    result["load_average"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
