"""Training, preview and export for the teach app, on the transfer-learning engine.

The frozen bundled backbone turns each stored sample into an embedding once
(kept in the database); a head from `convlab.transfer.fit_head` is trained on them
in a background thread, one job per project, evaluated on a stratified held-out
share, and saved as a features run directory. Preview embeds a frame with the same
backbone and applies the project's latest head.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, ConvlabError, DatasetError
from .store import Conflict, NotFound, Store, canonical_image

__all__ = ["TrainOptions", "Jobs", "Previewer", "OnnxBackbone", "export_project", "HEADS", "BACKBONE",
           "stratified_holdout", "load_head"]

BACKBONE = "efficientnet_lite0"
HEADS = ("knn", "linear", "mlp")
_EMBED_BATCH = 16   # images per embedding step (and per progress update)


@dataclass(frozen=True)
class TrainOptions:
    """What the Train panel sends; saved with the model."""

    head: str = "mlp"          # knn | linear | mlp
    epochs: int = 50           # dense heads: passes over the embeddings
    lr: float = 1e-3           # dense heads: learning rate
    k: int = 3                 # knn: neighbours
    augment: bool = False      # also train on flipped / cropped / recoloured copies
    copies: int = 2            # augmented copies per training image
    holdout: float = 0.15      # share of each class held out for the accuracy table
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"unknown head '{self.head}'; valid: {', '.join(HEADS)}")
        if not 1 <= self.epochs <= 1000:
            raise ConfigError(f"epochs must be 1-1000; got {self.epochs}")
        if not 0 < self.lr <= 1:
            raise ConfigError(f"learning rate must be in (0, 1]; got {self.lr}")
        if not 1 <= self.k <= 50:
            raise ConfigError(f"k must be 1-50; got {self.k}")
        if not 1 <= self.copies <= 8:
            raise ConfigError(f"copies must be 1-8; got {self.copies}")
        if not 0 < self.holdout < 0.5:
            raise ConfigError(f"holdout must be in (0, 0.5); got {self.holdout}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainOptions:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown training option(s) {sorted(unknown)}; valid: "
                              f"{', '.join(cls.__dataclass_fields__)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"bad training options: {exc}") from None


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train index, held-out index): each class gives round(fraction * n), at least one,
    and keeps at least one for training."""
    gen = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n = min(max(int(round(len(idx) * fraction)), 1), len(idx) - 1)
        held.append(idx[:n])
        train.append(idx[n:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, 256, 256) -> a random variant of each: horizontal flip, a crop of
    70-100% of the side scaled back, brightness and contrast x0.8-1.2."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    flips = torch.rand(n, generator=gen) < 0.5
    scales = 0.7 + 0.3 * torch.rand(n, generator=gen)
    gains = 0.8 + 0.4 * torch.rand(n, 2, generator=gen)
    for i in range(n):
        s = int(h * float(scales[i]))
        top = int(torch.randint(0, h - s + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - s + 1, (1,), generator=gen))
        crop = x[i:i + 1, :, top:top + s, left:left + s].float()
        crop = torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear",
                                               antialias=True, align_corners=False)[0]
        if flips[i]:
            crop = crop.flip(-1)
        mean = crop.mean()
        crop = (crop - mean) * gains[i, 1] + mean * gains[i, 0]
        out[i] = crop.round().clamp(0, 255).to(torch.uint8)
    return out


def _embed(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, H, W) -> float32 (N, D) with the bundled backbone (no disk cache:
    the store keeps embeddings itself)."""
    from ..embed import embed_images
    out = embed_images(images, BACKBONE, cache=False, progress=False, batch_size=_EMBED_BATCH)
    return out.numpy()


@dataclass
class JobStatus:
    """A training job's live state, polled by the UI."""

    project_id: int
    model_id: int
    state: str = "training"       # training | ready | failed
    stage: str = "starting"       # embedding | augmenting | fitting | evaluating | saving
    done: int = 0
    total: int = 0
    message: str = ""
    started: float = 0.0
    finished: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Jobs:
    """Training jobs, one per project at a time, each in its own thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._jobs: dict[int, JobStatus] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._embed_lock = threading.Lock()  # embedding is CPU-bound: one job at a time

    def status(self, pid: int) -> dict | None:
        with self._lock:
            job = self._jobs.get(pid)
            return job.to_dict() if job else None

    def start(self, pid: int, options: TrainOptions) -> JobStatus:
        """Start training project `pid`; Conflict when it is already training."""
        classes, labels, _ = self.store.project_samples(pid)
        counts = np.bincount(labels, minlength=len(classes)) if classes else np.zeros(0)
        if len(classes) < 2:
            raise DatasetError(f"training needs at least 2 classes; the project has {len(classes)}")
        short = [c for c, n in zip(classes, counts) if n < 2]
        if short:
            raise DatasetError(f"every class needs at least 2 samples (one is held out to measure "
                               f"accuracy); too few in: {', '.join(short)}")
        with self._lock:
            current = self._jobs.get(pid)
            if current is not None and current.state == "training":
                raise Conflict(f"project {pid} is already training (model {current.model_id}); "
                               f"wait for it to finish")
            mid = self.store.create_model_row(pid, asdict(options))
            job = JobStatus(pid, mid, started=time.time())
            self._jobs[pid] = job
            thread = threading.Thread(target=self._run, args=(job, options), daemon=True,
                                      name=f"train-project-{pid}")
            self._threads[pid] = thread
        thread.start()
        return job

    def wait(self, pid: int, timeout: float | None = None) -> dict | None:
        thread = self._threads.get(pid)
        if thread is not None:
            thread.join(timeout)
        return self.status(pid)

    def _run(self, job: JobStatus, options: TrainOptions) -> None:
        _lower_priority()
        try:
            classes, metrics = self._train(job, options)
            self.store.finish_model(job.model_id, classes, metrics)
            job.finished = time.time()  # before the state: pollers read both
            job.state, job.stage, job.message = "ready", "done", "trained"
        except Exception as exc:  # reported to the UI; the model row says why it failed
            msg = str(exc) if isinstance(exc, ConvlabError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, ConvlabError):
                traceback.print_exc()
            try:
                self.store.fail_model(job.model_id, msg)
            except Exception:  # the project may have been deleted meanwhile
                pass
            shutil.rmtree(self.store.model_dir / f"{job.model_id}.tmp", ignore_errors=True)
            job.finished = time.time()
            job.state, job.message = "failed", msg

    def embeddings(self, shas: list[str], job: JobStatus | None = None) -> np.ndarray:
        """Embeddings of stored samples (N, D), computing and storing the missing ones."""
        have = self.store.embeddings(shas, BACKBONE)
        missing = [s for s in dict.fromkeys(shas) if s not in have]
        if job is not None:
            job.stage, job.done, job.total = "embedding", len(shas) - len(missing), len(shas)
        with self._embed_lock:
            for i in range(0, len(missing), _EMBED_BATCH):
                part = missing[i:i + _EMBED_BATCH]
                x = torch.stack([self.store.read_image(s) for s in part])  # (B, 3, 256, 256)
                vecs = _embed(x)
                self.store.put_embeddings(BACKBONE, dict(zip(part, vecs)))
                have.update(zip(part, vecs))
                if job is not None:
                    job.done += len(part)
        return np.stack([have[s] for s in shas])

    def _train(self, job: JobStatus, options: TrainOptions) -> tuple[list[str], dict]:
        from ..transfer import fit_head, save_features_run

        t0 = time.time()
        classes, labels, shas = self.store.project_samples(job.project_id)
        y = torch.tensor(labels, dtype=torch.int64)
        emb = self.embeddings(shas, job)
        train_idx, held_idx = stratified_holdout(y, options.holdout, options.seed)
        x_train, y_train = emb[train_idx.numpy()], y[train_idx].numpy()
        if options.augment:
            gen = torch.Generator().manual_seed(options.seed)
            job.stage, job.done, job.total = "augmenting", 0, len(train_idx) * options.copies
            extra, extra_y = [], []
            with self._embed_lock:
                for _ in range(options.copies):
                    for i in range(0, len(train_idx), _EMBED_BATCH):
                        part = train_idx[i:i + _EMBED_BATCH].tolist()
                        x = torch.stack([self.store.read_image(shas[j]) for j in part])
                        extra.append(_embed(augment_batch(x, gen)))
                        extra_y.append(y[part].numpy())
                        job.done += len(part)
            x_train = np.concatenate([x_train, *extra])
            y_train = np.concatenate([y_train, *extra_y])
        job.stage, job.done, job.total = "fitting", 0, 0   # fit_head reports no steps
        head_opts = {"knn": {"k": options.k}, "linear": {},
                     "mlp": {"epochs": options.epochs, "lr": options.lr}}[options.head]
        head = fit_head(options.head, torch.from_numpy(x_train), torch.from_numpy(y_train),
                        num_classes=len(classes), seed=options.seed, **head_opts)
        job.stage = "evaluating"
        probs = head.predict_proba(torch.from_numpy(emb[held_idx.numpy()])).numpy()
        pred = probs.argmax(1)
        truth = y[held_idx].numpy()
        k = len(classes)
        confusion = np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)
        per_class = {c: float(confusion[i, i] / max(confusion[i].sum(), 1))
                     for i, c in enumerate(classes)}
        metrics = {"held_out": int(len(held_idx)), "train": int(len(train_idx)),
                   "train_with_augmentation": int(len(x_train)),
                   "accuracy": float((pred == truth).mean()), "per_class": per_class,
                   "confusion": confusion.tolist(), "seconds": round(time.time() - t0, 2)}
        job.stage = "saving"
        final = self.store.model_dir / str(job.model_id)
        tmp = final.with_name(f"{job.model_id}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_features_run(tmp, head, classes=classes, backbone=BACKBONE,
                          meta={"teach": {"project_id": job.project_id,
                                          "options": asdict(options), "metrics": metrics}})
        os.replace(tmp, final)
        return classes, metrics


def load_head(run_dir: Path):
    """The head of a features run (its backbone is the shared embedder's)."""
    from safetensors.torch import load_model

    from ..checkpoint import MODEL_FILE, read_meta
    from ..models.heads import build_head
    head = build_head(read_meta(run_dir)["head"])
    load_model(head, str(run_dir / MODEL_FILE), strict=True)
    return head.eval()


def _lower_priority() -> None:
    """Run this thread (and the compute threads it starts) at a lower CPU priority, so
    live predictions stay quick while a model trains."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


class OnnxBackbone:
    """The frozen backbone exported once to ONNX (parity-checked against torch by
    `convlab.export`) and run by ONNX Runtime on one thread per request: on this CPU a
    single frame takes a fraction of eager torch's time, and concurrent requests run
    side by side instead of fighting over the same compute threads."""

    def __init__(self, folder: Path) -> None:
        """folder: where the .onnx file is kept (derived data: the cache)."""
        from ..models.pretrained import weights_id
        self.path = folder / f"{BACKBONE}-{weights_id(None)}.onnx"
        self._lock = threading.Lock()
        self._model = None
        self.error = ""

    def start(self) -> threading.Thread:
        """Build (or load) the ONNX file in the background, at low priority."""
        def work():
            _lower_priority()
            self.ensure()
        thread = threading.Thread(target=work, daemon=True, name="onnx-backbone")
        thread.start()
        return thread

    def ensure(self):
        with self._lock:
            if self._model is None and not self.error:
                try:
                    self._model = self._load()
                except Exception as exc:  # preview falls back to torch; say why
                    self.error = f"{type(exc).__name__}: {exc}"
            return self._model

    def _load(self):
        from ..checkpoint import Run
        from ..embed import backbone_preprocess
        from ..export import OnnxModel, export_run
        from ..models import model_spec
        from ..models.backbone import FeatureExtractor
        from ..models import pretrained_model

        if not self.path.exists():
            extractor = FeatureExtractor(pretrained_model(BACKBONE), model_spec(BACKBONE).head).eval()
            meta = {"kind": "backbone", "classes": [], "model": {"name": BACKBONE},
                    "preprocess": backbone_preprocess(BACKBONE).to_dict()}
            export_run(Run(self.path.parent, meta, extractor), "onnx", out=self.path)
        model = OnnxModel(self.path, threads=1)
        model.pre = model.preprocess
        return model

    def embed(self, images: torch.Tensor) -> np.ndarray | None:
        """uint8 (N, 3, H, W) -> float32 (N, D), or None while the file is not ready."""
        model = self._model
        if model is None:
            return None
        return model.logits(model.pre(images)).numpy()        # (N, D)


class Previewer:
    """Live predictions with a project's latest trained model."""

    def __init__(self, store: Store, backbone: OnnxBackbone | None = None) -> None:
        self.store = store
        self.backbone = backbone
        self._lock = threading.Lock()
        self._heads: dict[int, tuple[int, object, list[str]]] = {}  # pid -> (model id, head, classes)

    def _head(self, pid: int):
        model = self.store.latest_model(pid)
        if model is None:
            self.store.project(pid)
            raise NotFound(f"project {pid} has no trained model yet; train it first")
        with self._lock:
            cached = self._heads.get(pid)
            if cached is None or cached[0] != model["id"]:
                head = load_head(self.store.model_dir / str(model["id"]))
                cached = (model["id"], head, model["classes"])
                self._heads[pid] = cached
        return cached

    def predict(self, pid: int, data: bytes) -> dict:
        """Class probabilities for one image file (a webcam frame or a dropped file)."""
        t0 = time.perf_counter()
        mid, head, classes = self._head(pid)
        img = canonical_image(data, self.store.limits)[None]      # (1, 3, 256, 256)
        emb = self.backbone.embed(img) if self.backbone is not None else None
        engine = "onnxruntime"
        if emb is None:
            emb, engine = _embed(img), "torch"                    # (1, D)
        probs = head.predict_proba(torch.from_numpy(emb))[0].numpy()
        return {"model_id": mid, "classes": classes, "probs": [float(p) for p in probs],
                "top": classes[int(probs.argmax())], "engine": engine,
                "ms": round((time.perf_counter() - t0) * 1000, 1)}


def export_project(store: Store, pid: int) -> dict:
    """Write the project's latest model and its data to HOME/exports/project-P-model-M/:
    run/ (a features run for `convlab predict` / `evaluate`), model.onnx (with its
    preprocessing metadata, parity-checked) and dataset.zip (folder of class folders).
    Built in a temporary folder and renamed into place."""
    import zipfile

    from ..export import export_run

    model = store.latest_model(pid)
    if model is None:
        store.project(pid)
        raise NotFound(f"project {pid} has no trained model to export; train it first")
    exports = store.home / "exports"
    final = exports / f"project-{pid}-model-{model['id']}"
    tmp = exports / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copytree(store.model_dir / str(model["id"]), tmp / "run")
        onnx = export_run(tmp / "run", "onnx", out=tmp / "model.onnx")
        classes, labels, shas = store.project_samples(pid)
        with zipfile.ZipFile(tmp / "dataset.zip", "w", zipfile.ZIP_STORED) as zf:
            for label, sha in zip(labels, shas):  # names were checked: one safe path part each
                zf.write(store.blob_path(sha), f"{classes[label]}/{sha[:16]}.jpg")
        old = exports / f".{final.name}.old{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"dir": str(final), "run": str(final / "run"), "onnx": str(final / "model.onnx"),
            "dataset": str(final / "dataset.zip"), "model_id": model["id"], "images": len(shas),
            "classes": classes, "onnx_max_abs_diff": onnx.max_abs_diff}
