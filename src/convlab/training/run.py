"""train(): dataset + model name + config -> a run directory, as `convlab train` does it."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import META_FILE, read_meta
from ..config import TrainConfig
from ..data import DetectionSet, ImageSet, Preprocess, load_dataset
from ..errors import CheckpointError, ConfigError, DatasetError
from ..models import create_model, default_preprocess, model_spec
from ..tasks import CLASSIFICATION, DetectionTask, Task
from .distributed import is_main, launched_by_torchrun, local_rank, main_first
from .splits import load_test_split
from .callbacks import Callback, EpochStats
from .loop import fit
from .metrics import EvalResult, evaluate

__all__ = ["train", "TrainResult", "resolve_device", "prepare_data", "prepare_run_dir",
           "model_for_data", "detection_model", "task_for", "record_test", "DETECTORS"]


@dataclass
class TrainResult:
    run_dir: Path | None
    history: list[EpochStats]
    test: EvalResult | None
    model: torch.nn.Module


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cpu' and 'cuda[:N]' as given. Under
    torchrun a bare 'cuda' means this process's own GPU (cuda:LOCAL_RANK)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and launched_by_torchrun():
        device = f"cuda:{local_rank()}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"unknown device '{device}'; valid: auto, cpu, cuda, cuda:N")
    return torch.device(device)


def prepare_data(dataset: str | os.PathLike | ImageSet | DetectionSet, config: TrainConfig, *,
                 channels: int | None = None, size: int | None = None, strict: bool = False,
                 few_shot: int | None = None) -> tuple[ImageSet, ImageSet | None, ImageSet | None]:
    """(train, validation, test) for a dataset name, a folder, or an ImageSet or
    DetectionSet: the one split of every training path (train, transfer, lr-find,
    overfit, evaluation).

    The validation split is stratified (config.val_split, config.seed; detection sets
    split their images at random); the test split is the dataset's official one, or
    None. `few_shot` keeps k images per class of the training data before the
    validation split is taken.
    """
    if isinstance(dataset, (ImageSet, DetectionSet)):
        full, test = dataset, None
    else:
        full = load_dataset(dataset, "train", channels=channels, size=size, strict=strict)
        test = load_test_split(dataset, channels=channels, size=size)
    if few_shot:
        full = full.few_shot(few_shot, seed=config.seed)
    counts = full.class_counts()
    if isinstance(full, DetectionSet):
        if not len(full.rows()):
            raise DatasetError(f"{full.name}: detection training needs boxes; no label file "
                               f"has any")
        if config.val_split > 0:
            train_set, val_set = full.split(config.val_split, config.seed)
        else:
            train_set, val_set = full, None
        return train_set, val_set, test
    if full.num_classes < 2 or int((counts > 0).sum()) < 2:
        raise DatasetError(f"{full.name}: training needs at least 2 classes with images; "
                           f"found {int((counts > 0).sum())}")
    if config.val_split > 0:
        small = [full.classes[i] for i, c in enumerate(counts.tolist()) if 0 < c < 2]
        if small:
            raise DatasetError(f"{full.name}: a validation split needs at least 2 images per "
                               f"class; too few in: {', '.join(small)} (or use --val-split 0)")
        train_set, val_set = full.split(config.val_split, config.seed)
    else:
        train_set, val_set = full, None
    return train_set, val_set, test


def model_for_data(model: str, data: ImageSet | DetectionSet, *, channels: int | None = None,
                   model_kwargs: dict | None = None, pretrained: bool = False
                   ) -> tuple[torch.nn.Module, Preprocess, dict]:
    """(fresh model, its preprocessing, its create_model kwargs) for registered `model`
    fed the images of `data` (classes, channels and, for size-flexible models, size).
    `pretrained` starts from the model's offline weights (a new head when the classes
    differ). Detection data builds the detector form (detection_model)."""
    if isinstance(data, DetectionSet):
        return detection_model(model, data, channels=channels, pretrained=pretrained)
    spec = model_spec(model)
    in_chans = channels or data.shape[0]
    preprocess, input_size = default_preprocess(model, in_chans, data.shape[1])
    kwargs = {"num_classes": data.num_classes, "in_chans": in_chans,
              **({"input_size": input_size} if spec.flexible_size else {}),
              **(model_kwargs or {})}
    return create_model(model, pretrained=pretrained, **kwargs), preprocess, kwargs


DETECTORS = ("tiny_yolo_face",)


def detection_model(model: str, data: DetectionSet, *, channels: int | None = None,
                    pretrained: bool = False) -> tuple[torch.nn.Module, Preprocess, dict]:
    """The lecture's TinyYOLOv2 for `data`'s classes: A x (5 + C) output channels (25
    for one class), input the data's size rounded to a multiple of 32, letterboxed.
    From scratch it has BatchNorm and anchors from k-means on the training boxes;
    `pretrained` starts from face-api's face detector (its anchors and folded
    BatchNorm; a new head for other classes)."""
    from ..models.detector import FACE_ANCHORS, FACE_MEAN, load_face_api
    from ..tasks.detection import kmeans_anchors

    if model not in DETECTORS:
        raise ConfigError(f"detection data trains a detector; '{model}' is a classifier. "
                          f"Valid: {', '.join(DETECTORS)}")
    in_chans = channels or data.shape[0]
    size = max(32, round(data.shape[1] / 32) * 32)
    if pretrained:
        anchors = FACE_ANCHORS
    else:
        wh = data.rows()[:, 3:5] * (size / 32)  # box sizes in grid cells
        anchors = tuple(tuple(round(float(v), 4) for v in a) for a in kmeans_anchors(wh, 5))
    kwargs = {"num_classes": data.num_classes, "in_chans": in_chans, "detect": True,
              "anchors": [list(a) for a in anchors], "batchnorm": not pretrained}
    net = create_model(model, **kwargs)
    if pretrained:
        load_face_api(net)
    mean = FACE_MEAN if in_chans == 3 else (sum(FACE_MEAN) / 3,)
    pre = Preprocess(in_chans, (size, size), "letterbox", mean=mean, std=(1.0,) * len(mean))
    return net, pre, kwargs


def prepare_run_dir(out: Path | None, *, resume: bool | None = False,
                    overwrite: bool = False) -> None:
    """The run-folder rule of every command that writes a run: a folder that already
    holds a run is continued (resume), replaced (overwrite) or refused, with the way out
    in the message (resume=None: the command cannot resume, so it is not offered).
    Under torchrun only rank 0 removes it."""
    if out is None or resume or not (out / META_FILE).exists():
        return
    if not overwrite:
        way = "pass --resume to continue it, --overwrite to replace it" if resume is not None \
            else "pass --overwrite to replace it"
        raise CheckpointError(f"{out} already holds a run; {way}, or choose another --out")
    if is_main():
        shutil.rmtree(out)


def record_test(run_dir: str | os.PathLike | None, model: torch.nn.Module,
                result: EvalResult) -> dict:
    """Add a test-set evaluation to a run's meta.json as "test": {top1, top5, loss, n}
    (detection: {mAP50, mAP50_95, loss, n})
    and save the run with `model` (every training path and transfer strategy records its
    test result here, in this one shape). Returns that entry; without a run directory,
    or outside the main process under torchrun, nothing is written."""
    entry = result.summary()
    if run_dir is not None and is_main():
        from ..checkpoint import save_run
        meta = read_meta(run_dir)
        meta["test"] = entry
        save_run(run_dir, model, meta)
    return entry


def task_for(data: ImageSet | DetectionSet, model_kwargs: dict) -> Task:
    """The task of training on `data` with a model built from `model_kwargs`."""
    if isinstance(data, DetectionSet):
        return DetectionTask(model_kwargs["anchors"], data.num_classes)
    return CLASSIFICATION


def _check_resume(out: Path, model_name: str, data_name: str) -> None:
    meta = read_meta(out)
    if meta.get("model", {}).get("name") != model_name:
        raise CheckpointError(f"--resume: {out} was trained with model "
                              f"'{meta.get('model', {}).get('name')}', not '{model_name}'")
    if meta.get("dataset", {}).get("name") != data_name:
        raise CheckpointError(f"--resume: {out} was trained on dataset "
                              f"'{meta.get('dataset', {}).get('name')}', not '{data_name}'")


def train(dataset: str | os.PathLike | ImageSet, model: str, config: TrainConfig = TrainConfig(),
          *, out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
          device: str = "auto", model_kwargs: dict | None = None, channels: int | None = None,
          image_size: int | None = None, strict: bool = False, callbacks: Sequence[Callback] = (),
          augment: Callable | None = None, verbose: bool = True, pretrained: bool = False,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train registered model `model` on `dataset` and evaluate on its test split.

    `out` is the run directory (saved every epoch). `resume` continues it; an existing
    run is otherwise refused unless `overwrite`. Detection data (a YOLO folder,
    digit-boxes) trains the detector form of tiny_yolo_face with the detection task;
    `pretrained` starts from the model's offline weights.
    """
    model_spec(model)  # an unknown name fails before any data is loaded
    dev = resolve_device(device)
    out = Path(out) if out is not None else None
    prepare_run_dir(out, resume=resume, overwrite=overwrite)
    train_set, val_set, test_set = prepare_data(dataset, config, channels=channels,
                                                size=image_size, strict=strict)
    saved = None
    if resume and out is not None:
        with main_first():  # reading may finish an interrupted save: rank 0 alone does that
            if (out / META_FILE).exists():
                _check_resume(out, model, train_set.name)
                saved = read_meta(out)
    torch.manual_seed(config.seed)  # the initial weights follow the seed (same in every process)
    net, preprocess, kwargs = model_for_data(model, train_set, channels=channels,
                                             model_kwargs=model_kwargs, pretrained=pretrained)
    if saved is not None and isinstance(train_set, DetectionSet):
        # the run's own detector (its anchors; no BatchNorm when it started --pretrained),
        # not one made anew from this data and these options
        kwargs = saved["model"]["kwargs"]
        net, preprocess = create_model(model, **kwargs), Preprocess.from_dict(saved["preprocess"])
    task = task_for(train_set, kwargs)
    if config.normalize != "model" and task.name == "classification":  # training split's statistics
        from ..data.augment import normalization
        preprocess = normalization(train_set, preprocess, config.normalize)
    meta = {"model": {"name": model, "kwargs": kwargs},
            "dataset": {"name": train_set.name, "train": len(train_set),
                        "val": len(val_set) if val_set is not None else 0,
                        "test": len(test_set) if test_set is not None else 0}}
    if verbose and is_main():
        c, h, w = train_set.shape
        log(f"{train_set.name}: {c}x{h}x{w}, {train_set.num_classes} classes -> train {len(train_set)}, val "
            f"{len(val_set) if val_set is not None else 0}"
            + (f", test {len(test_set)}" if test_set is not None else ""))
    result = fit(net, train_set, val_set, config=config, preprocess=preprocess, run_dir=out,
                 meta=meta, resume=resume, callbacks=callbacks, device=dev, augment=augment,
                 task=task, verbose=verbose, log=log)
    test_result = None
    if test_set is not None:
        test_result = evaluate(net, test_set, preprocess, device=dev, task=task)
        record_test(out, net, test_result)
    return TrainResult(out, result.history, test_result, net)
