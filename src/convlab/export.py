"""Export a run to ONNX or TorchScript, with its preprocessing inside, checked against torch.

`export_run(run, "onnx")` writes RUN/model.onnx whose metadata (`convlab_meta`) holds the
classes and preprocessing; `"torchscript"` writes RUN/model.torchscript.pt with the same
JSON as an extra file. At export the exported model and eager torch run on the same
preprocessed batch: the largest absolute difference of the class probabilities must
stay below 1e-4 and the top-1 classes must agree (the logits' difference is reported too), or the export is refused (nothing written).
`OnnxModel` runs an exported file with ONNX Runtime (`convlab predict --backend onnx`).
"""
from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Run, load_run, read_meta
from .config import EXPORT_FORMATS
from .data import Preprocess
from .errors import CheckpointError, ConfigError, ModelError
from .files import atomic_path
from .tasks import task_of

__all__ = ["FORMATS", "EXPORT_FILES", "ExportResult", "export_run", "export_onnx_file", "OnnxModel",
           "PARITY_TOLERANCE"]

FORMATS = EXPORT_FORMATS  # onnx, torchscript
EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
PARITY_TOLERANCE = 1e-4
_EXPORT_LOCK = threading.RLock()


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float        # of the class probabilities
    same_top1: bool
    bytes: int
    max_logit_diff: float = 0.0


def _export_meta(run: Run) -> str:
    return json.dumps({"classes": run.classes, "preprocess": run.meta["preprocess"],
                       "model": run.meta.get("model"), "kind": run.meta.get("kind", "model"),
                       "task": run.meta.get("task", "classification"),
                       **({"detection": run.meta["detection"]} if "detection" in run.meta else {})})


def _check_input(run: Run, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """A preprocessed batch of random images of the run's input size."""
    pre = run.preprocess
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, pre.channels, *pre.size), dtype=torch.uint8, generator=gen)
    return pre(images)


def _parity(reference: torch.Tensor, got: torch.Tensor, task=None) -> tuple[float, float, bool]:
    """(max abs difference of probabilities, of logits, same top-1). A detector's grid
    compares its squashed scores (sigmoid of every number) and, as 'same top-1', the
    boxes decoded from both: the same count and classes in every image."""
    logit_diff = float((reference - got).abs().max())
    if task is not None and task.name == "detection":
        prob_diff = float((reference.sigmoid() - got.sigmoid()).abs().max())
        a, b = task.decode(reference), task.decode(got)
        same = all(torch.equal(x.labels, y.labels) for x, y in zip(a, b))
        return prob_diff, logit_diff, same
    prob_diff = float((reference.softmax(1) - got.softmax(1)).abs().max())
    return prob_diff, logit_diff, bool(torch.equal(reference.argmax(1), got.argmax(1)))


def export_run(run: Run | str | os.PathLike, fmt: str = "onnx", *, out: str | os.PathLike | None = None,
               opset: int = 17) -> ExportResult:
    """Write the run's model as ONNX or TorchScript (default into the run directory) after
    a parity check against eager torch; raise ModelError when parity fails."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; valid: {', '.join(FORMATS)}")
    run = run if isinstance(run, Run) else load_run(run)
    path = Path(out) if out is not None else run.path / EXPORT_FILES[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    model = run.model.eval()
    x = _check_input(run)
    with torch.inference_mode():
        reference = model(x).float()
    meta = _export_meta(run)
    task = task_of(run.meta)
    with atomic_path(path) as tmp:  # written only when parity holds
        if fmt == "onnx":  # a detector takes images of any size (multiples of 32)
            got = _export_onnx(model, x, tmp, meta, opset, dynamic_size=task.name == "detection")
        else:
            got = _export_torchscript(model, x, tmp, meta)
        diff, logit_diff, same = _parity(reference, got, task)
        if not (diff < PARITY_TOLERANCE and same):
            raise ModelError(f"{fmt} export of {run.path} fails the parity check: max abs "
                             f"probability difference {diff:.2e} (limit {PARITY_TOLERANCE:g}), "
                             f"logits {logit_diff:.2e}, same top-1: "
                             f"{same}; nothing written")
    return ExportResult(path, fmt, diff, same, path.stat().st_size, logit_diff)


def export_onnx_file(model: nn.Module, x: torch.Tensor, path: Path, *, meta: str | None = None,
                     opset: int = 17, dynamic_size: bool = False) -> None:
    """torch.onnx.export of `model` on example input `x` into `path`, checked by onnx;
    dynamic batch (and with dynamic_size, height and width: a detector's grid), with
    `meta` as the 'convlab_meta' property. torch.onnx.export keeps global state, so
    exports in one process take turns."""
    import onnx

    axes = {0: "batch", **({2: "height", 3: "width"} if dynamic_size else {})}
    try:
        with _EXPORT_LOCK, warnings.catch_warnings():  # the TorchScript-based exporter is the reliable one
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": axes, "logits": axes},
                              opset_version=opset, dynamo=False)
    except Exception as exc:  # an operator ONNX cannot express
        raise ModelError(f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    proto = onnx.load(str(path))
    if meta is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "convlab_meta", meta
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _export_onnx(model: nn.Module, x: torch.Tensor, path: Path, meta: str, opset: int,
                 dynamic_size: bool = False) -> torch.Tensor:
    export_onnx_file(model, x, path, meta=meta, opset=opset, dynamic_size=dynamic_size)
    return OnnxModel(path).logits(x)


def _export_torchscript(model: nn.Module, x: torch.Tensor, path: Path, meta: str) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still loads everywhere
        try:
            scripted = torch.jit.trace(model, (x,), check_trace=False)
        except Exception as exc:
            raise ModelError(f"TorchScript export failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0]})") from None
        torch.jit.save(scripted, str(path), _extra_files={"convlab_meta.json": meta})
        loaded = torch.jit.load(str(path))
        return loaded(x).float()


class OnnxModel:
    """An exported ONNX file under ONNX Runtime: preprocessed float input -> logits."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no ONNX model; make it with: convlab export "
                                  f"{self.path.parent} --format onnx")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # ONNX Runtime's threads otherwise spin for a while after each run, taking the
        # cores from the torch work around it (a detector's letterbox took 45 ms, not 1)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CheckpointError(f"{self.path}: ONNX Runtime cannot load it ({exc})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = json.loads(props["convlab_meta"]) if "convlab_meta" in props else {}

    @property
    def preprocess(self) -> Preprocess | None:
        return Preprocess.from_dict(self.meta["preprocess"]) if "preprocess" in self.meta else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """float input (N, C, H, W) -> logits (N, K)."""
        out = self.session.run(None, {"input": x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out).float()


def onnx_path(run_dir: str | os.PathLike) -> Path:
    """Where a run's ONNX export lives (checking that the run exists)."""
    read_meta(run_dir)
    return Path(run_dir) / EXPORT_FILES["onnx"]
