"""Run directories: model.safetensors + meta.json (+ train_state, metrics.jsonl).

Every save goes through a small journal so a run directory is never half-written:
the new files are written and fsynced in RUN/.staging/, a COMPLETE marker is
written, then each file is renamed into place. A crash before the marker leaves the
old checkpoint untouched (the staging folder is discarded on the next load); a crash
after it is finished on the next load. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from .data.preprocess import Preprocess
from .errors import CheckpointError

__all__ = ["Run", "save_run", "load_run", "read_meta", "load_train_state", "library_versions",
           "flatten_state", "unflatten_state", "MODEL_FILE", "META_FILE", "STATE_FILE"]

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"
EVALUATION_FILE = "evaluation.json"  # written by training.evaluation, read by the figures
_STAGING = ".staging"
_COMPLETE = "COMPLETE"


def library_versions() -> dict:
    import torchvision

    from ._version import __version__
    return {"convlab": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _recover(run_dir: Path) -> None:
    """Finish a save that reached its COMPLETE marker; drop one that did not."""
    staging = run_dir / _STAGING
    if not staging.is_dir():
        return
    if (staging / _COMPLETE).exists():
        for f in sorted(staging.iterdir(), key=lambda p: p.name == META_FILE):
            if f.name != _COMPLETE:
                os.replace(f, run_dir / f.name)
        _fsync_dir(run_dir)
    shutil.rmtree(staging, ignore_errors=True)


def flatten_state(obj, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    """Split a nested state (dicts/lists of tensors and plain values) into tensors + JSON."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o, key):
        if isinstance(o, torch.Tensor):
            tensors[key] = o.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(o, dict):
            return {"__dict__": [[walk(k, f"{key}.k{i}") if isinstance(k, torch.Tensor) else k,
                                  walk(v, f"{key}.{i}")] for i, (k, v) in enumerate(o.items())]}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(o)]
        return o
    return tensors, walk(obj, prefix or "s")


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton):
    """Inverse of flatten_state."""
    def walk(o):
        if isinstance(o, dict) and "__tensor__" in o:
            return tensors[o["__tensor__"]]
        if isinstance(o, dict) and "__dict__" in o:
            return {k: walk(v) for k, v in o["__dict__"]}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o
    return walk(skeleton)


def save_run(run_dir: str | os.PathLike, model: nn.Module, meta: dict,
             train_state: dict | None = None) -> Path:
    """Atomically write the model weights, meta.json, metrics.jsonl and (optionally) the
    training state (optimizer, RNG) of a run. Returns the run directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _recover(run_dir)
    staging = run_dir / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    epoch = str(meta.get("state", {}).get("epoch", 0))
    save_model(module, str(staging / MODEL_FILE), metadata={"epoch": epoch})
    _fsync_file(staging / MODEL_FILE)
    if train_state is not None:
        tensors, skeleton = flatten_state(train_state)
        save_file(tensors, str(staging / STATE_FILE),
                  metadata={"skeleton": json.dumps(skeleton), "epoch": epoch})
        _fsync_file(staging / STATE_FILE)
    for name, text in ((METRICS_FILE, "".join(json.dumps(m) + "\n" for m in meta.get("metrics", []))),
                       (META_FILE, json.dumps(meta, indent=2, default=str))):
        with open(staging / name, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    (staging / _COMPLETE).touch()
    _fsync_dir(staging)
    _recover(run_dir)
    return run_dir


def read_meta(run_dir: str | os.PathLike) -> dict:
    """meta.json of a run directory (finishing an interrupted save first)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    _recover(run_dir)
    meta_file = run_dir / META_FILE
    if not meta_file.exists() or not (run_dir / MODEL_FILE).exists():
        raise CheckpointError(f"{run_dir}: not a run directory (needs {META_FILE} and {MODEL_FILE})")
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_file}: not valid JSON ({exc})") from None


def load_train_state(run_dir: str | os.PathLike) -> dict | None:
    """The optimizer and RNG state saved with a run, or None."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            skeleton = json.loads(f.metadata()["skeleton"])
        return unflatten_state(load_file(str(path)), skeleton)
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(f"{path}: damaged training state ({exc})") from None


@dataclass
class Run:
    """A loaded run directory: the model (eval mode), its preprocessing and classes."""

    path: Path
    meta: dict
    model: nn.Module

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.meta["preprocess"])


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Rebuild a run's model from meta.json and load its weights strictly."""
    from .models import create_model

    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    if meta.get("kind") == "features":  # transfer 'features': pretrained backbone + saved head
        from .models.heads import load_features_model
        return Run(run_dir, meta, load_features_model(run_dir / MODEL_FILE, meta).to(device).eval())
    try:
        spec = meta["model"]
        model = create_model(spec["name"], **spec.get("kwargs", {}))
    except KeyError as exc:
        raise CheckpointError(f"{run_dir}/{META_FILE}: missing entry {exc}") from None
    try:
        missing, unexpected = load_model(model, str(run_dir / MODEL_FILE), strict=False)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{run_dir}/{MODEL_FILE}: cannot load ({exc})") from None
    if missing or unexpected:
        raise CheckpointError(f"{run_dir}/{MODEL_FILE} does not fit model '{spec['name']}': "
                              f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    return Run(run_dir, meta, model.to(device).eval())
