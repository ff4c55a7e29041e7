"""A trained run's evaluation, written to RUN/evaluation.json for the figures to read.

evaluate_run() runs the model on the run's test split (else its validation split, else
its training data) once and writes the task's counts of its outputs, as evaluate() makes
them (top-1/top-5, per-class accuracy, the confusion matrix), and the most confidently
wrong images (their indices in the evaluated set, true and predicted class, confidence,
and where the evidence for the predicted class lies: an occlusion or Grad-CAM map of at
most 16x16, 0..1). convlab.figures draws from that file and never runs a model.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..analysis.attribution import attribution_copy, grad_cam, occlusion
from ..checkpoint import EVALUATION_FILE, META_FILE, Run, load_run, read_meta
from ..config import TrainConfig
from ..data import ImageSet, list_datasets
from ..errors import ConvlabError, ModelError
from ..files import atomic_write_bytes
from ..tasks import task_of
from .metrics import EvalResult, predict_logits, score_logits
from .run import prepare_data
from .splits import load_test_split

__all__ = ["RunEvaluation", "evaluate_run", "evaluation_data", "evaluation_stale",
           "confident_mistakes", "mistake_maps", "MAP_SIDE", "OCCLUSION_SIDE"]

MAP_SIDE = 16         # evaluation.json keeps evidence maps at most this many cells a side
OCCLUSION_SIDE = 64   # inputs up to this side get occlusion maps, larger ones Grad-CAM


@dataclass
class RunEvaluation:
    """What evaluate_run() wrote, with the set it was made on (the mistakes' indices
    point into `data`)."""

    path: Path                  # RUN/evaluation.json
    split: str
    data: ImageSet
    result: EvalResult
    mistakes: list[dict]        # index, true, predicted, confidence; most confident first


def evaluation_data(run: Run) -> tuple[ImageSet, str]:
    """(images, split name) to evaluate a run on: the dataset's test split when it has
    one, else the run's own validation split (the same seed and fraction as in training),
    else its training data. Raises a ConvlabError when the data cannot be found again."""
    name = run.meta.get("dataset", {}).get("name")
    if not name:
        raise ConvlabError(f"{run.path}: the run does not name its dataset")
    channels = run.preprocess.channels
    size = None if name in list_datasets() else run.preprocess.size[0]  # folders: the run's size
    test = load_test_split(name, channels=channels, size=size)
    if test is not None:
        return test, "test"
    cfg = TrainConfig.from_dict(run.meta.get("train", {}))
    train, val, _ = prepare_data(name, cfg, channels=channels, size=size)
    return (val, "validation") if val is not None and len(val) else (train, "training")


def confident_mistakes(logits: torch.Tensor, labels: torch.Tensor, k: int = 16
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices, predicted class, its probability) of the k wrong predictions made
    with the highest confidence, most confident first."""
    probs = logits.double().softmax(1)                       # (N, K)
    conf, pred = probs.max(1)                                # (N,), (N,)
    wrong = torch.nonzero(pred != labels).flatten()
    order = wrong[conf[wrong].argsort(descending=True)][:k]
    return order, pred[order], conf[order]


def mistake_maps(model: torch.nn.Module, images: torch.Tensor, preprocess, predicted: torch.Tensor,
                 device: str | torch.device = "cpu") -> tuple[dict, list] | None:
    """({method, layer}, maps): where the evidence for the predicted class lies in each of
    the uint8 images (N, C, H, W), average-pooled to at most MAP_SIDE a side, each scaled
    to 0..1 and rounded to 2 decimals (nested lists for JSON).

    Inputs of at most OCCLUSION_SIDE pixels a side get occlusion maps: a few hundred
    forward passes of a small image cost little, and they show what the network weighs
    at each place, where Grad-CAM's channel weights (gradients averaged over the map)
    lose the place-by-place weights of a dense classifier like mnist_cnn's. Larger
    inputs (ImageNet backbones, which pool globally before the classifier, where
    Grad-CAM is exact) get Grad-CAM on the last conv layer's output, or no maps (None)
    when Grad-CAM cannot follow the model (no conv layer, a kNN head)."""
    if not len(images):
        return None
    twin = attribution_copy(model)
    x = preprocess(images.to(device))
    target = predicted.tolist()
    if max(x.shape[-2:]) <= OCCLUSION_SIDE:
        cam = occlusion(twin, x, target)
    else:
        try:
            cam = grad_cam(twin, x, target)
        except ModelError:      # no conv layer, or no gradient (a kNN head): occlusion
            return None         # would cost hundreds of large forward passes per image
    maps = cam.maps                                              # (N, h, w)
    h, w = maps.shape[-2:]
    if max(h, w) > MAP_SIDE:
        maps = torch.nn.functional.adaptive_avg_pool2d(maps[:, None], (min(h, MAP_SIDE),
                                                                     min(w, MAP_SIDE)))[:, 0]
    maps = maps / maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return ({"method": cam.method, "layer": cam.layer},
            [[[round(v, 2) for v in row] for row in m] for m in maps.cpu().tolist()])


def evaluation_stale(run_dir: str | os.PathLike) -> bool:
    """True when RUN/evaluation.json is missing or older than the run's meta.json
    (the run trained further since it was evaluated)."""
    path = Path(run_dir)
    read_meta(path)  # a clear error for a folder that is not a run; finishes an interrupted save
    evaluation = path / EVALUATION_FILE
    return (not evaluation.exists()
            or evaluation.stat().st_mtime < (path / META_FILE).stat().st_mtime)


EXAMPLES = 8  # a detection run's evaluation.json keeps the boxes found in this many images


def _write_detection(run: Run, data, split: str, result, found) -> RunEvaluation:
    """evaluation.json of a detection run: mAP50, mAP50-95, AP50 per class, and the
    boxes found (score >= 0.5) in the first EXAMPLES images, xyxy in 0..1."""
    examples = [{"index": i, "boxes": [[round(v, 4) for v in b] for b in d.boxes.tolist()],
                 "scores": [round(v, 3) for v in d.scores.tolist()], "labels": d.labels.tolist()}
                for i, d in enumerate(found)]
    info = {"dataset": data.name, "split": split, "task": "detection", **result.to_dict(),
            "examples": examples}
    rows = ",\n    ".join(json.dumps(e) for e in examples)
    text = json.dumps({**info, "examples": None}, indent=2).replace(
        '"examples": null', f'"examples": [\n    {rows}\n  ]' if examples else '"examples": []')
    path = run.path / EVALUATION_FILE
    atomic_write_bytes(path, text.encode())
    return RunEvaluation(path, split, data, result, [])


def _json_text(info: dict) -> str:
    """evaluation.json with one confusion row and one mistake per line (readable diffs)."""
    lists = {k: info[k] for k in ("confusion", "mistakes")}
    text = json.dumps({**info, **dict.fromkeys(lists)}, indent=2)
    for key, items in lists.items():
        rows = ",\n    ".join(json.dumps(r) for r in items)
        text = text.replace(f'"{key}": null', f'"{key}": [\n    {rows}\n  ]' if items
                            else f'"{key}": []')
    return text


def evaluate_run(run_dir: str | os.PathLike, *, data: ImageSet | None = None, split: str = "",
                 device: str | torch.device = "cpu", mistakes: int = 24) -> RunEvaluation | None:
    """Evaluate a run and write RUN/evaluation.json.

    `data` is the set to evaluate on, named `split` (default: evaluation_data()). When
    the data cannot be found again (a run trained on an in-memory ImageSet) nothing is
    written and None is returned. `mistakes` is how many of the most confidently wrong
    images to record.
    """
    run = load_run(run_dir, device)
    if data is None:
        try:
            data, split = evaluation_data(run)
        except ConvlabError:
            return None
    split = split or "evaluation"
    # one pass: the logits give both the task's counts and the confident mistakes
    logits = predict_logits(run.model, data, run.preprocess, device=device)
    task = task_of(run.meta)
    result = score_logits(logits, data.labels, list(data.classes), task=task)
    if task.name == "detection":
        return _write_detection(run, data, split, result, task.decode(logits[:EXAMPLES]))
    idx, pred, conf = confident_mistakes(logits, data.labels, mistakes)
    wrong = [{"index": i, "true": t, "predicted": p, "confidence": c} for i, t, p, c in
             zip(idx.tolist(), data.labels[idx].tolist(), pred.tolist(), conf.tolist())]
    info = {"dataset": data.name, "split": split, **result.to_dict()}
    maps = mistake_maps(run.model, data.images[idx], run.preprocess, pred, device)
    if maps is not None:
        info["maps"] = {**maps[0], "class": "predicted"}
        for m, cam in zip(wrong, maps[1]):
            m["map"] = cam
    info["mistakes"] = wrong
    path = run.path / EVALUATION_FILE
    atomic_write_bytes(path, _json_text(info).encode())
    return RunEvaluation(path, split, data, result, wrong)
