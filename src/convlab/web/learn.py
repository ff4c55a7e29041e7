"""Training, preview and export for the teach app, on the transfer-learning engine.

A training job does what the `features` strategy of `convlab.transfer` does, on the
project's stored samples and with the pieces every pipeline uses: the stratified split of
`ImageSet.split` (`stratified_split`, on the labels, so nothing is decoded for it),
embeddings from `convlab.embed.Embedder` with its content-keyed cache in HOME/embeddings
(keyed by the stored files' hashes, so a cached sample is not even decoded), augmented
copies through the batched `convlab.data.augment`, a head from `transfer.fit_head`, the
held-out counts of the classification task (as `evaluate` counts them) and a features
run directory from `transfer.save_features_run`. Each job runs in a background thread,
one per project. Preview embeds a frame with the same backbone and applies the
project's latest head (`models.heads.load_head`, the loader `load_run` uses).

Each project names its backbone (one of the offline ones). A job embeds with the
project's backbone at the time it starts, and the Embedder's cache folder is keyed by
backbone and weights, so two backbones never share or mix rows; a model's run records
its backbone, and preview and export use the model's, whatever the project says now.
Before a project has a model, the preview can show ImageNet's top-5 labels from
MobileNetV2 instead (`ImagenetPreview`: the lecture's Cozmo demo).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import AugmentConfig
from ..errors import ConfigError, Conflict, ConvlabError, DatasetError, NotFound
from .store import DEFAULT_BACKBONE, SAMPLE_SIZE, Store, canonical_image, embedding_keys

__all__ = ["TrainOptions", "Jobs", "Previewer", "OnnxBackbone", "OnnxBackbones", "TorchBackbone",
           "ImagenetPreview", "export_project", "HEADS", "AUGMENT", "IMAGENET_MODEL"]

IMAGENET_MODEL = "mobilenet_v2"  # the lecture's Cozmo demo: ImageNet top-5 of the webcam frame
HEADS = ("knn", "linear", "mlp")
_EMBED_BATCH = 16   # images per embedding step (and per progress update)
_EXPORT_SWAP = threading.Lock()   # moves a finished export into place
# What the `augment` option turns on: the framing and light a webcam varies. A crop of
# half the area or more (scaled back), a mirror image half the time, brightness,
# contrast and saturation x0.8-1.2.
AUGMENT = AugmentConfig(resized_crop=0.5, hflip=0.5, jitter=0.2)


@dataclass(frozen=True)
class TrainOptions:
    """What the Train panel sends; saved with the model."""

    head: str = "mlp"          # knn | linear | mlp
    epochs: int = 50           # dense heads: passes over the embeddings
    lr: float = 1e-3           # dense heads: learning rate
    k: int = 3                 # knn: neighbours
    augment: bool = False      # also train on augmented copies (AUGMENT)
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

    def head_options(self) -> dict:
        """The options of `transfer.fit_head` for this head."""
        return {"knn": {"k": self.k}, "linear": {},
                "mlp": {"epochs": self.epochs, "lr": self.lr}}[self.head]


class TorchBackbone:
    """The backbones in eager torch, each a `convlab.embed.Embedder` whose cache is in the
    store's home (a folder per backbone key): training embeds with them, and preview
    uses them until a backbone's ONNX file is ready. Each is built on first use
    (loading the weights takes a moment) and kept."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._embedders: dict[str, object] = {}

    def embedder(self, backbone: str = DEFAULT_BACKBONE):
        from ..embed import Embedder
        with self._lock:
            if backbone not in self._embedders:
                self._embedders[backbone] = Embedder(backbone, cache_dir=self.cache_dir)
            return self._embedders[backbone]


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

    def progress(self, stage: str) -> Callable[[int, int], None]:
        """A report(done, total) callback that shows `stage` with those counts."""
        def report(done: int, total: int) -> None:
            self.stage, self.done, self.total = stage, done, total
        return report


class Jobs:
    """Training jobs, one per project at a time, each in its own thread."""

    def __init__(self, store: Store, backbone: TorchBackbone | None = None) -> None:
        self.store = store
        self.backbone = backbone if backbone is not None else TorchBackbone(store.embedding_dir)
        self._lock = threading.Lock()
        self._jobs: dict[int, JobStatus] = {}
        self._threads: dict[int, threading.Thread] = {}
        # One job computes at a time: embedding is CPU-bound, and the augmentation and the
        # head's fit draw from torch's global generator (seeded by the job), so a job that
        # drew while another one seeded it would not be reproducible.
        self._compute_lock = threading.Lock()

    def status(self, pid: int) -> dict | None:
        with self._lock:
            job = self._jobs.get(pid)
            return job.to_dict() if job else None

    def start(self, pid: int, options: TrainOptions) -> JobStatus:
        """Start training project `pid`; Conflict when it is already training."""
        classes, labels, _ = self.store.project_samples(pid)
        counts = torch.bincount(torch.tensor(labels, dtype=torch.int64), minlength=len(classes))
        if len(classes) < 2:
            raise DatasetError(f"training needs at least 2 classes; the project has {len(classes)}")
        short = [c for c, n in zip(classes, counts.tolist()) if n < 2]
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

    def _train(self, job: JobStatus, options: TrainOptions) -> tuple[list[str], dict]:
        import torch.nn.functional as F

        from ..data.augment import make_augment
        from ..data.imageset import stratified_split
        from ..tasks import CLASSIFICATION
        from ..transfer import fit_head, save_features_run

        t0 = time.time()
        backbone = self.store.project(job.project_id)["backbone"]
        classes, labels, shas = self.store.project_samples(job.project_id)
        y = torch.tensor(labels, dtype=torch.int64)

        def load(index: list[int]) -> torch.Tensor:
            return torch.stack([self.store.read_image(shas[i]) for i in index])  # (B, 3, 256, 256)

        embedder = self.backbone.embedder(backbone)
        train_idx, held_idx = stratified_split(y, len(classes), options.holdout, options.seed)
        with self._compute_lock:
            emb = embedder.embed_by_key(embedding_keys(shas), load, batch_size=_EMBED_BATCH,
                                        show_progress=False, report=job.progress("embedding"))
            stats = embedder.stats
            x_train, y_train = emb[train_idx], y[train_idx]
            if options.augment:
                augment = make_augment(AUGMENT, (SAMPLE_SIZE, SAMPLE_SIZE))
                extra = _augmented_embeddings(embedder, load, train_idx.tolist(), augment,
                                              options.copies, options.seed,
                                              job.progress("augmenting"))   # (copies, n, D)
                x_train = torch.cat([x_train, extra.flatten(0, 1)])
                y_train = torch.cat([y_train, y_train.repeat(options.copies)])
            job.stage, job.done, job.total = "fitting", 0, 0   # fit_head reports no steps
            head = fit_head(options.head, x_train, y_train, num_classes=len(classes),
                            seed=options.seed, **options.head_options())
        job.stage = "evaluating"
        truth = y[held_idx]
        with torch.inference_mode():
            logits = head(emb[held_idx]).float()                                 # (H, K)
        loss = float(F.cross_entropy(logits, truth, reduction="sum"))
        result = CLASSIFICATION.eval_result(CLASSIFICATION.eval_counts(logits, truth, len(classes)),
                                            loss, list(classes))
        metrics = {"backbone": backbone, "held_out": result.n, "train": len(train_idx),
                   "train_with_augmentation": len(x_train), "accuracy": result.top1,
                   # a class without held-out samples has no accuracy (NaN is not JSON)
                   "per_class": {c: (None if math.isnan(a) else a) for c, a in result.per_class.items()},
                   "confusion": result.confusion.tolist(),
                   "embedded": stats.computed, "from_cache": stats.cached,
                   "seconds": round(time.time() - t0, 2)}
        job.stage = "saving"
        final = self.store.model_dir / str(job.model_id)
        tmp = final.with_name(f"{job.model_id}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_features_run(tmp, head, classes=classes, backbone=backbone,
                          meta={"teach": {"project_id": job.project_id,
                                          "options": asdict(options), "metrics": metrics}})
        os.replace(tmp, final)
        return classes, metrics


def _augmented_embeddings(embedder, load: Callable[[list[int]], torch.Tensor], index: list[int],
                          augment: Callable[[torch.Tensor], torch.Tensor], copies: int, seed: int,
                          report: Callable[[int, int], None]) -> torch.Tensor:
    """Embeddings of `copies` augmented versions of each image at `index`: float32
    (copies, len(index), D). Each batch is decoded once for all its copies; the versions
    are new every time, so they bypass the cache. The augmentation draws from torch's
    global generator, seeded here and restored afterwards, so it leaves the process's
    random state as it found it; the caller holds Jobs' compute lock, so no other job
    seeds or draws from that generator meanwhile and a job is reproducible."""
    outs: list[torch.Tensor] = []
    report(0, len(index) * copies)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for b in range(0, len(index), _EMBED_BATCH):
            x = load(index[b:b + _EMBED_BATCH]).float().div_(255.0)              # (B, 3, H, W)
            versions = [augment(x).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
                        for _ in range(copies)]
            outs.append(torch.stack([embedder.forward(v) for v in versions]))  # (copies, B, D)
            report(min(b + _EMBED_BATCH, len(index)) * copies, len(index) * copies)
    return torch.cat(outs, dim=1) if outs else torch.zeros(copies, 0, embedder.dim)


def _lower_priority() -> None:
    """Run this thread (and the compute threads it starts) at a lower CPU priority, so
    live predictions stay quick while a model trains."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


class OnnxBackbone:
    """One frozen backbone exported once to ONNX (parity-checked against torch by
    `convlab.export`) and run by ONNX Runtime on one thread per request: a single frame
    takes a fraction of eager torch's time, and concurrent requests run side by side
    instead of fighting over the same compute threads."""

    def __init__(self, folder: Path, backbone: str = DEFAULT_BACKBONE) -> None:
        """folder: where the .onnx file is kept (derived data: the cache)."""
        from ..models.pretrained import weights_id
        self.name = backbone
        self.path = folder / f"{backbone}-{weights_id(None, backbone)}.onnx"
        self._lock = threading.Lock()
        self._model = None
        self.error = ""

    def start(self) -> threading.Thread:
        """Build (or load) the ONNX file in the background, at low priority."""
        def work():
            _lower_priority()
            self.ensure()
        thread = threading.Thread(target=work, daemon=True, name=f"onnx-{self.name}")
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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            extractor = FeatureExtractor(pretrained_model(self.name),
                                         model_spec(self.name).head).eval()
            meta = {"kind": "backbone", "classes": [], "model": {"name": self.name},
                    "preprocess": backbone_preprocess(self.name).to_dict()}
            # ONNX exports take turns inside export.export_onnx_file (global exporter state)
            export_run(Run(self.path.parent, meta, extractor), "onnx", out=self.path)
        model = OnnxModel(self.path, threads=1)
        model.pre = model.preprocess
        return model

    def embed(self, images: torch.Tensor) -> torch.Tensor | None:
        """uint8 (N, 3, H, W) -> float32 (N, D), or None while the file is not ready."""
        model = self._model
        if model is None:
            return None
        return model.logits(model.pre(images))                # (N, D)


class OnnxBackbones:
    """An OnnxBackbone per backbone, each exported in the background on first use
    (preview uses eager torch for that backbone until its file is ready)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._items: dict[str, OnnxBackbone] = {}

    def get(self, backbone: str = DEFAULT_BACKBONE) -> OnnxBackbone:
        with self._lock:
            item = self._items.get(backbone)
            if item is None:
                item = self._items[backbone] = OnnxBackbone(self.folder, backbone)
                item.start()
            return item

    def ensure(self, backbone: str = DEFAULT_BACKBONE):
        """The ONNX model of `backbone`, built now if need be (None when it failed: see error)."""
        return self.get(backbone).ensure()

    @property
    def error(self) -> str:
        """Why the exports failed, one 'backbone: reason' line for each backbone asked for
        so far whose export failed ('' when none did). Starts no export."""
        with self._lock:
            items = list(self._items.values())
        return "\n".join(f"{item.name}: {item.error}" for item in items if item.error)

    def embed(self, images: torch.Tensor, backbone: str = DEFAULT_BACKBONE) -> torch.Tensor | None:
        return self.get(backbone).embed(images)


class Previewer:
    """Live predictions with a project's latest trained model."""

    def __init__(self, store: Store, backbone: OnnxBackbones | None = None,
                 torch_backbone: TorchBackbone | None = None) -> None:
        """backbone: the ONNX backbones (None: eager torch only); torch_backbone: the eager
        ones (shared with the training jobs)."""
        self.store = store
        self.backbone = backbone
        self.torch_backbone = torch_backbone or TorchBackbone(store.embedding_dir)
        self._lock = threading.Lock()
        # pid -> (model id, head, classes, the backbone the head was trained on)
        self._heads: dict[int, tuple[int, object, list[str], str]] = {}

    def _head(self, pid: int):
        from ..checkpoint import MODEL_FILE, read_meta
        from ..models.heads import load_head

        model = self.store.latest_model(pid)
        if model is None:
            self.store.project(pid)
            raise NotFound(f"project {pid} has no trained model yet; train it first")
        with self._lock:
            cached = self._heads.get(pid)
            if cached is None or cached[0] != model["id"]:
                run_dir = self.store.model_dir / str(model["id"])
                meta = read_meta(run_dir)
                head = load_head(run_dir / MODEL_FILE, meta)
                cached = (model["id"], head, model["classes"], meta["backbone"]["name"])
                self._heads[pid] = cached
        return cached

    def predict(self, pid: int, data: bytes) -> dict:
        """Class probabilities for one image file (a webcam frame or a dropped file)."""
        t0 = time.perf_counter()
        mid, head, classes, backbone = self._head(pid)
        img = canonical_image(data, self.store.limits)[None]      # (1, 3, 256, 256)
        emb = self.backbone.embed(img, backbone) if self.backbone is not None else None
        engine = "onnxruntime"
        if emb is None:
            emb, engine = self.torch_backbone.embedder(backbone).forward(img), "torch"  # (1, D)
        probs = head.predict_proba(emb)[0]
        return {"model_id": mid, "classes": classes, "probs": [float(p) for p in probs],
                "top": classes[int(probs.argmax())], "engine": engine, "backbone": backbone,
                "ms": round((time.perf_counter() - t0) * 1000, 1)}


class ImagenetPreview:
    """ImageNet's labels for one image from a pretrained classifier (MobileNetV2 by
    default, as on the lecture's Cozmo robot): what the preview shows before a project
    has a model. The classifier is loaded on first use and kept."""

    def __init__(self, limits, model: str = IMAGENET_MODEL) -> None:
        self.limits = limits
        self.name = model
        self._lock = threading.Lock()
        self._model = None

    def _net(self):
        from ..models import default_preprocess, pretrained_model
        from ..models.pretrained import imagenet_classes

        with self._lock:
            if self._model is None:
                net = pretrained_model(self.name).eval()
                self._model = (net, default_preprocess(self.name, 3)[0], imagenet_classes())
            return self._model

    def predict(self, data: bytes, top: int = 5) -> dict:
        """The `top` ImageNet labels of an image file, most probable first."""
        if not 1 <= top <= 20:
            raise ConfigError(f"top must be 1-20; got {top}")
        t0 = time.perf_counter()
        net, pre, names = self._net()
        img = canonical_image(data, self.limits)[None]            # (1, 3, 256, 256)
        with torch.inference_mode():
            probs = net(pre(img)).float().softmax(1)[0]           # (1000,)
        val, idx = probs.topk(top)
        labels = [names[i] for i in idx.tolist()]
        return {"model": self.name, "classes": labels, "probs": [float(v) for v in val],
                "top": labels[0], "engine": "torch",
                "ms": round((time.perf_counter() - t0) * 1000, 1)}


def export_project(store: Store, pid: int) -> dict:
    """Write the project's latest model and its data to HOME/exports/project-P-model-M/:
    run/ (a features run for `convlab predict` / `evaluate`), model.onnx (with its
    preprocessing metadata, parity-checked) and dataset.zip (folder of class folders).
    Built in a temporary folder and renamed into place."""
    import zipfile

    from ..checkpoint import read_meta
    from ..export import export_run

    model = store.latest_model(pid)
    if model is None:
        store.project(pid)
        raise NotFound(f"project {pid} has no trained model to export; train it first")
    exports = store.home / "exports"
    final = exports / f"project-{pid}-model-{model['id']}"
    exports.mkdir(parents=True, exist_ok=True)
    # a folder of its own: two exports of one project at once each build their own
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=exports))
    try:
        shutil.copytree(store.model_dir / str(model["id"]), tmp / "run")
        onnx = export_run(tmp / "run", "onnx", out=tmp / "model.onnx")
        classes, labels, shas = store.project_samples(pid)
        with zipfile.ZipFile(tmp / "dataset.zip", "w", zipfile.ZIP_STORED) as zf:
            for label, sha in zip(labels, shas):  # names were checked: one safe path part each
                zf.write(store.blob_path(sha), f"{classes[label]}/{sha[:16]}.jpg")
        old = tmp.with_name(f"{tmp.name}.old")
        with _EXPORT_SWAP:   # a folder cannot be renamed onto a full one: one swap at a time
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"dir": str(final), "run": str(final / "run"), "onnx": str(final / "model.onnx"),
            "dataset": str(final / "dataset.zip"), "model_id": model["id"], "images": len(shas),
            "backbone": read_meta(final / "run")["backbone"]["name"],
            "classes": classes, "onnx_max_abs_diff": onnx.max_abs_diff}
