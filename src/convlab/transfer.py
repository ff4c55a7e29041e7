"""Transfer learning from a pretrained ImageNet backbone: the three strategies.

- features: frozen backbone -> cached embeddings -> a head (`linear` softmax regression,
  `mlp` with one or two hidden layers, `knn` by cosine similarity, `svm` linear SVM).
- finetune: a new classifier, the first blocks frozen (the last `unfreeze` trainable),
  frozen BatchNorm layers kept in eval mode, a lower learning rate for the backbone.
- full: every layer trained from the pretrained start; scratch: the same architecture
  from random weights, the baseline.
- compare: all of them on one stratified split, with the lecture's advice.

Stable API used by the web app (`convlab teach`):

    head = fit_head("linear" | "mlp" | "knn" | "svm", train_emb, train_labels, **options)
    head.predict_proba(emb) -> (N, K) probabilities
    save_features_run(run_dir, head, classes=[...], backbone="efficientnet_lite0") -> run_dir

A features run holds the head's tensors in model.safetensors and, in meta.json,
`kind: "features"`, the backbone (name, layer, weights) and its preprocessing;
`load_run`, `Predictor`, `convlab predict` and `convlab evaluate` rebuild backbone + head
from it. Every strategy writes such a loadable run directory.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import library_versions, save_run
from .config import STRATEGIES, TrainConfig, TransferConfig
from .data import FeatureSet, ImageSet, Preprocess, list_datasets
from ._runtime import one_thread
from .files import atomic_write_bytes
from .embed import Embedder, backbone_preprocess
from .errors import ConfigError, DatasetError
from .models import create_model, model_spec, pretrained_model
from .models.backbone import layer_groups
from .models.heads import EmbeddingHead, KNNHead, LinearHead, MLPHead, SVMHead
from .training import Callback, EvalResult, TrainState, evaluate, fit, is_main, prepare_data, prepare_run_dir
from .training.run import record_test

__all__ = ["STRATEGIES", "TransferConfig", "TransferResult", "CompareResult", "fit_head",
           "save_features_run", "transfer", "compare", "FreezeBatchNorm", "advice"]

# ------------------------------------------------------------------ heads on embeddings

def _fit_linear(emb: torch.Tensor, labels: torch.Tensor, k: int, *, l2: float = 1e-3,
                max_iter: int = 100, seed: int = 0) -> LinearHead:
    """Softmax regression by L-BFGS on the full batch (a convex problem: one solution)."""
    torch.manual_seed(seed)
    head = LinearHead(emb.shape[1], k)
    head.set_scale(emb)
    x = head.scaled(emb)
    nn.init.zeros_(head.fc.weight)
    nn.init.zeros_(head.fc.bias)
    opt = torch.optim.LBFGS(head.fc.parameters(), lr=1, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head.fc(x), labels) + l2 * head.fc.weight.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    return head


def _fit_mlp(emb: torch.Tensor, labels: torch.Tensor, k: int, *, hidden=(256,), dropout: float = 0.2,
             l2: float = 1e-3, epochs: int | None = None, lr: float = 1e-3, batch_size: int = 128,
             seed: int = 0) -> MLPHead:
    """A small MLP by AdamW on mini-batches of embeddings, trained by the one training
    loop (fit) on a FeatureSet; by default at least 20 epochs and 100 steps (small sets
    need more passes)."""
    if epochs is None:
        epochs = max(20, -(-100 // -(-len(emb) // batch_size)))
    torch.manual_seed(seed)
    if isinstance(hidden, int):
        hidden = (hidden,)
    head = MLPHead(emb.shape[1], k, tuple(hidden), dropout)
    head.set_scale(emb)
    features = FeatureSet(head.scaled(emb).float(), labels, [str(c) for c in range(k)])
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adamw",
                         weight_decay=l2 * 10, schedule="constant", val_split=0.0, seed=seed,
                         channels_last=False, precision="fp32")
    fit(head.net, features, config=config, preprocess=None, verbose=False)
    return head.eval()


def _fit_knn(emb: torch.Tensor, labels: torch.Tensor, k_classes: int, *, k: int = 5,
             seed: int = 0) -> KNNHead:
    head = KNNHead(emb.shape[1], k_classes, len(emb), k)
    head.remember(emb, labels)
    return head


def _fit_svm(emb: torch.Tensor, labels: torch.Tensor, k: int, *, c: float = 1.0,
             seed: int = 0) -> SVMHead:
    """scikit-learn's LinearSVC (one-vs-rest) on standardised embeddings, kept as tensors."""
    from sklearn.svm import LinearSVC

    if c <= 0:
        raise ConfigError(f"SVM C must be positive; got {c}")
    head = SVMHead(emb.shape[1], k)
    head.set_scale(emb)
    x = head.scaled(emb).numpy()
    present = sorted(set(labels.tolist()))
    svm = LinearSVC(C=c, random_state=seed, max_iter=5000).fit(x, labels.numpy())
    coef = torch.as_tensor(svm.coef_, dtype=torch.float32)
    bias = torch.as_tensor(svm.intercept_, dtype=torch.float32)
    weight = torch.zeros(k, emb.shape[1])
    b = torch.full((k,), -1e4)  # classes without training images are never predicted
    if len(present) == 2:  # one decision value d: class 1 when d > 0
        weight[present[0]], weight[present[1]] = -coef[0] / 2, coef[0] / 2
        b[present[0]], b[present[1]] = -bias[0] / 2, bias[0] / 2
    else:
        for row, cls in enumerate(svm.classes_.tolist()):
            weight[cls], b[cls] = coef[row], bias[row]
    with torch.no_grad():
        head.fc.weight.copy_(weight)
        head.fc.bias.copy_(b)
    return head


_FITTERS: dict[str, Callable[..., EmbeddingHead]] = {
    "linear": _fit_linear, "mlp": _fit_mlp, "knn": _fit_knn, "svm": _fit_svm}


def fit_head(kind: str, train_emb: torch.Tensor, train_labels: torch.Tensor, *,
             num_classes: int | None = None, seed: int = 0, **options) -> EmbeddingHead:
    """Train a head on embeddings (N, D) with int64 labels (N,); returns it in eval mode.

    kind: 'linear' (softmax regression by L-BFGS; option l2), 'mlp' (hidden=(256,) or
    two layers, dropout, l2, epochs, lr), 'knn' (cosine, option k), 'svm' (linear SVM,
    option c). num_classes defaults to max label + 1. The head's `predict_proba(emb)`
    gives (N, K) probabilities; `save_features_run` stores it.
    """
    if kind not in _FITTERS:
        from .errors import unknown
        raise ConfigError(unknown("head", kind, _FITTERS))
    emb = torch.as_tensor(train_emb).float().cpu()
    labels = torch.as_tensor(train_labels).long().cpu()
    if emb.dim() != 2 or labels.shape != (len(emb),):
        raise DatasetError(f"fit_head needs embeddings (N, D) and labels (N,); got "
                           f"{tuple(emb.shape)} and {tuple(labels.shape)}")
    if len(emb) == 0:
        raise DatasetError("fit_head needs at least one training embedding")
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise DatasetError(f"labels must lie in 0..{k - 1}; found {int(labels.min())}..{int(labels.max())}")
    if len(torch.unique(labels)) < 2 and kind in ("svm",):
        raise DatasetError("an SVM needs images of at least 2 classes")
    try:
        with one_thread():  # small matrices: threads only add synchronisation
            head = _FITTERS[kind](emb, labels, k, seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(f"head '{kind}': bad options {sorted(options)} ({exc})") from None
    return head.eval()


def save_features_run(run_dir: str | os.PathLike, head: EmbeddingHead, *, classes: Sequence[str],
                      backbone: str = "efficientnet_lite0", layer: str | None = None,
                      weights: str | os.PathLike | None = None, image_size: int | None = None,
                      meta: dict | None = None) -> Path:
    """Write a features run (head tensors + meta.json naming the backbone and its
    preprocessing) that load_run, Predictor, `convlab predict` and `evaluate` can use."""
    if len(classes) != head.num_classes:
        raise ConfigError(f"the head predicts {head.num_classes} classes but {len(classes)} "
                          f"class names were given")
    pre = _backbone_pre(backbone, image_size)
    full = {**(meta or {}), "kind": "features",
            "backbone": {"name": backbone, "layer": layer,
                         "weights": None if weights is None else str(Path(weights).resolve())},
            "head": head.config, "classes": list(classes), "preprocess": pre.to_dict(),
            "versions": library_versions(),
            "model": {"name": backbone, "kwargs": {"num_classes": len(classes)}}}
    full.setdefault("state", {"epoch": 1, "complete": True})
    return save_run(run_dir, head, full)


def _backbone_pre(backbone: str, image_size: int | None) -> Preprocess:
    pre = backbone_preprocess(backbone)
    return pre if image_size is None else pre.replace(size=(image_size, image_size))


# ------------------------------------------------------------------ fine-tuning

class FreezeBatchNorm(Callback):
    """Keep the given BatchNorm layers in eval mode (running statistics fixed) while the
    rest of the model trains; fit() puts the model in train mode each epoch."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)

    def on_epoch_start(self, state: TrainState) -> None:
        for m in self.modules:
            m.eval()


def _split_for_finetune(model: nn.Module, head: str, unfreeze: int | None
                        ) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Module]]:
    """(head params, trainable backbone params, frozen BatchNorm modules); unfreeze=None
    trains everything."""
    groups = layer_groups(model, head)
    body, head_names = groups[:-1], set(groups[-1])
    train_names = set(n for g in body for n in g) if unfreeze is None else \
        set(n for g in (body[len(body) - unfreeze:] if unfreeze else []) for n in g)
    params = dict(model.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in head_names or n in train_names)
    frozen_bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and m.weight is not None and not m.weight.requires_grad]
    return ([params[n] for n in params if n in head_names],
            [params[n] for n in params if n in train_names], frozen_bn)


# ------------------------------------------------------------------ strategies

@dataclass
class TransferResult:
    """What one strategy measured. Times in seconds; inference in ms per image."""

    strategy: str
    run_dir: Path | None
    val_acc: float | None
    train_seconds: float
    infer_ms: float
    test_acc: float | None = None
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["run_dir"] = None if self.run_dir is None else str(self.run_dir)
        return d


def _evaluate_head(head: EmbeddingHead, emb: torch.Tensor, data: ImageSet) -> EvalResult:
    """The head on a set's embeddings, counted as every run is evaluated (the task's
    counts through evaluate(), on a FeatureSet: no preprocessing)."""
    return evaluate(head, FeatureSet(emb.float().cpu(), data.labels, list(data.classes)), None)


def _time_per_image(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> float:
    """ms per image of `fn` on up to 32 images (one warm-up call first)."""
    x = images[:32]
    if len(x) == 0:
        return float("nan")
    fn(x[:2])
    t0 = time.perf_counter()
    fn(x)
    return (time.perf_counter() - t0) * 1000 / len(x)


def _load_split(dataset, train_cfg: TrainConfig, tcfg: TransferConfig, few_shot: int | None = None
                ) -> tuple[ImageSet, ImageSet | None, ImageSet | None]:
    """(train, validation, official test or None); folders load at the backbone's size."""
    named = isinstance(dataset, ImageSet) or os.fspath(dataset) in list_datasets()
    size = None if named else (tcfg.image_size or model_spec(tcfg.backbone).input_size)
    return prepare_data(dataset, train_cfg, size=size, few_shot=few_shot)


def _dataset_meta(train: ImageSet, val: ImageSet | None, test: ImageSet | None) -> dict:
    return {"name": train.name, "train": len(train), "val": len(val) if val is not None else 0,
            "test": len(test) if test is not None else 0}


def _run_features(train: ImageSet, val: ImageSet | None, test: ImageSet | None, *,
                  tcfg: TransferConfig, train_cfg: TrainConfig, out: Path | None, device,
                  verbose: bool, log) -> TransferResult:
    t0 = time.perf_counter()
    embedder = Embedder(tcfg.backbone, layer=tcfg.layer, weights=tcfg.weights, device=device,
                        image_size=tcfg.image_size)
    tr = embedder.embed(train.images, show_progress=verbose)
    embed_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    head = fit_head(tcfg.head, tr, train.labels, num_classes=train.num_classes, seed=train_cfg.seed,
                    **tcfg.head_options())
    head_s = time.perf_counter() - t1
    val_acc = test_acc = test_result = None
    if val is not None and len(val):
        val_acc = _evaluate_head(head, embedder.embed(val.images, show_progress=verbose), val).top1
    if test is not None:
        test_result = _evaluate_head(head, embedder.embed(test.images, show_progress=verbose), test)
        test_acc = test_result.top1
    sample = val.images if val is not None and len(val) else train.images
    infer_ms = _time_per_image(lambda x: head.predict_proba(embedder.forward(x)), sample)
    detail = {"head": tcfg.head, "embed_seconds": embed_s, "head_seconds": head_s,
              "embedded": embedder.stats.computed, "from_cache": embedder.stats.cached,
              "dim": int(tr.shape[1])}
    if verbose:
        log(f"features: {len(train)} embeddings of dimension {tr.shape[1]} in {embed_s:.1f}s "
            f"({embedder.stats.cached} from cache), {tcfg.head} head trained in {head_s:.3f}s"
            + (f" - val_acc: {val_acc:.4f}" if val_acc is not None else ""))
    if out is not None and is_main():
        meta = {"dataset": _dataset_meta(train, val, test), "transfer": asdict(tcfg),
                "train": train_cfg.to_dict(),
                "metrics": [{"epoch": 1, "val_acc": val_acc, "seconds": embed_s + head_s}]}
        save_features_run(out, head, classes=train.classes, backbone=tcfg.backbone,
                          layer=tcfg.layer, weights=tcfg.weights, image_size=tcfg.image_size,
                          meta=meta)
        if test_result is not None:
            record_test(out, head, test_result)
    return TransferResult("features", out, val_acc, embed_s + head_s, infer_ms, test_acc, detail)


def _run_trained(train: ImageSet, val: ImageSet | None, test: ImageSet | None, *,
                 tcfg: TransferConfig, train_cfg: TrainConfig, out: Path | None, device,
                 augment: Callable | None, callbacks: Sequence[Callback], verbose: bool,
                 log) -> TransferResult:
    spec = model_spec(tcfg.backbone)
    k = train.num_classes
    torch.manual_seed(train_cfg.seed)  # new weights follow the seed (alike in every process)
    if tcfg.strategy == "scratch":
        model = create_model(tcfg.backbone, num_classes=k, in_chans=3)
    else:
        model = pretrained_model(tcfg.backbone, num_classes=k, in_chans=3, weights=tcfg.weights)
    pre = _backbone_pre(tcfg.backbone, tcfg.image_size)
    if augment is None and getattr(getattr(train_cfg, "augment", None), "active", False):
        from .data.augment import make_augment  # the training-craft augmentation, when configured
        augment = make_augment(train_cfg.augment, pre.size)
    extra: list[Callback] = []
    if tcfg.strategy == "scratch":
        param_groups = None
        trainable = sum(p.numel() for p in model.parameters())
    else:
        head_p, body_p, frozen_bn = _split_for_finetune(
            model, spec.head, tcfg.unfreeze if tcfg.strategy == "finetune" else None)
        param_groups = [{"params": head_p, "lr": train_cfg.lr}]
        if body_p:
            param_groups.append({"params": body_p, "lr": train_cfg.lr * tcfg.backbone_lr})
        if frozen_bn:
            extra.append(FreezeBatchNorm(frozen_bn))
        trainable = sum(p.numel() for p in head_p + body_p)
    if verbose:
        total = sum(p.numel() for p in model.parameters())
        log(f"{tcfg.strategy}: {tcfg.backbone}, {trainable:,} of {total:,} parameters trained"
            + (f" (last {tcfg.unfreeze} blocks + classifier)" if tcfg.strategy == "finetune" else ""))
    meta = {"model": {"name": tcfg.backbone, "kwargs": {"num_classes": k, "in_chans": 3}},
            "dataset": _dataset_meta(train, val, test), "transfer": asdict(tcfg)}
    t0 = time.perf_counter()
    result = fit(model, train, val, config=train_cfg, preprocess=pre, run_dir=out, meta=meta,
                 callbacks=[*extra, *callbacks], device=device, augment=augment,
                 param_groups=param_groups, verbose=verbose, log=log)
    train_s = time.perf_counter() - t0
    model.eval()
    val_acc = result.history[-1].val_acc if result.history else None
    test_acc = None
    if test is not None:
        test_result = evaluate(model, test, pre, device=device, batch_size=100,
                               channels_last=train_cfg.channels_last)
        test_acc = test_result.top1
        record_test(out, model, test_result)
    sample = val.images if val is not None and len(val) else train.images

    @torch.inference_mode()
    def infer(x: torch.Tensor) -> torch.Tensor:
        y = pre(x.to(device))
        if train_cfg.channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        return model(y).softmax(1)
    infer_ms = _time_per_image(infer, sample)
    return TransferResult(tcfg.strategy, out, val_acc, train_s, infer_ms, test_acc,
                          {"trainable_parameters": trainable, "epochs": result.epochs_run})


def transfer(dataset: str | os.PathLike | ImageSet, tcfg: TransferConfig = TransferConfig(),
             train_cfg: TrainConfig = TrainConfig(batch_size=32), *,
             out: str | os.PathLike | None = None, overwrite: bool = False,
             device: str | torch.device = "cpu", augment: Callable | None = None,
             callbacks: Sequence[Callback] = (), evaluate_test: bool = False,
             few_shot: int | None = None, verbose: bool = True,
             log: Callable[[str], None] = print, _split: tuple | None = None) -> TransferResult:
    """Run one strategy on a dataset name, a folder of class folders or an ImageSet.

    The data is split (stratified, train_cfg.val_split); the run directory `out` is
    loadable by `convlab predict` and `convlab evaluate`. `evaluate_test` also scores the
    dataset's official test split where it has one; `few_shot` keeps k training images
    per class before the split. `augment` (float 0..1 batch -> batch) is used by
    finetune/full/scratch.
    """
    model_spec(tcfg.backbone)  # an unknown backbone fails before anything is loaded
    out = Path(out) if out is not None else None
    prepare_run_dir(out, overwrite=overwrite, resume=None)
    train, val, test = _split if _split is not None else _load_split(dataset, train_cfg, tcfg, few_shot)
    test = test if evaluate_test else None
    if val is not None and len(val) == 0:
        val = None
    common = dict(tcfg=tcfg, train_cfg=train_cfg, out=out, device=device, verbose=verbose, log=log)
    if tcfg.strategy == "features":
        return _run_features(train, val, test, **common)
    return _run_trained(train, val, test, augment=augment, callbacks=callbacks, **common)


# ------------------------------------------------------------------ compare + advice

SIMILAR_THRESHOLD = 0.8   # frozen-feature validation accuracy at which data looks "like ImageNet"
MUCH_DATA_PER_CLASS = 100  # training images per class from which data counts as "much"


def advice(images_per_class: float, feature_acc: float | None, num_classes: int) -> dict:
    """The lecture's table for the user's case: little or much data, similar or different
    to ImageNet (judged from how well the frozen features already separate the classes)."""
    much = images_per_class >= MUCH_DATA_PER_CLASS
    similar = feature_acc is not None and feature_acc >= SIMILAR_THRESHOLD
    table = {
        (False, True): ("features", "little data, similar to ImageNet: train a linear classifier "
                                    "(or kNN) on the frozen top-layer features"),
        (False, False): ("features", "little data, different from ImageNet: hard case - try a "
                                     "linear classifier on features from an earlier layer "
                                     "(--layer), and collect more data"),
        (True, True): ("finetune", "much data, similar to ImageNet: fine-tune the last few blocks"),
        (True, False): ("full", "much data, different from ImageNet: fine-tune many or all "
                                "layers from the pretrained start"),
    }
    strategy, text = table[(much, similar)]
    chance = 1 / max(num_classes, 1)
    return {"data": "much" if much else "little", "similar": similar,
            "images_per_class": images_per_class, "frozen_feature_acc": feature_acc,
            "chance": chance, "suggested": strategy, "text": text}


@dataclass
class CompareResult:
    results: list[TransferResult]
    advice: dict
    winner: str

    def rows(self) -> list[list]:
        return [[r.strategy, None if r.val_acc is None else round(r.val_acc, 4),
                 round(r.train_seconds, 1), round(r.infer_ms, 2), str(r.run_dir or "")]
                for r in self.results]

    def to_dict(self) -> dict:
        return {"results": [r.to_dict() for r in self.results], "advice": self.advice,
                "winner": self.winner}


def compare(dataset: str | os.PathLike | ImageSet, tcfg: TransferConfig = TransferConfig(),
            train_cfg: TrainConfig = TrainConfig(batch_size=32), *,
            strategies: Sequence[str] = STRATEGIES, out: str | os.PathLike = "runs/compare",
            overwrite: bool = False, device: str | torch.device = "cpu",
            augment: Callable | None = None, evaluate_test: bool = False,
            few_shot: int | None = None, verbose: bool = True,
            log: Callable[[str], None] = print) -> CompareResult:
    """Run `strategies` on one stratified split; each writes out/STRATEGY. Returns the
    table's rows, the lecture's advice for this data and the strategy that won here."""
    model_spec(tcfg.backbone)  # an unknown backbone fails before anything is loaded
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown strategy '{unknown[0]}'; valid: {', '.join(STRATEGIES)}")
    if train_cfg.val_split <= 0:
        raise ConfigError("compare needs a validation split (--val-split > 0) to compare on")
    out = Path(out)
    split = _load_split(dataset, train_cfg, tcfg, few_shot)
    train = split[0]
    results = []
    for s in strategies:
        if verbose:
            log(f"\n--- {s} ---")
        results.append(transfer(dataset, replace(tcfg, strategy=s), train_cfg, out=out / s,
                                overwrite=overwrite, device=device, augment=augment,
                                evaluate_test=evaluate_test, verbose=verbose, log=log,
                                _split=split))
    feat = next((r.val_acc for r in results if r.strategy == "features"), None)
    counts = [c for c in train.class_counts().tolist() if c > 0]
    adv = advice(statistics.median(counts), feat, train.num_classes)
    scored = [r for r in results if r.val_acc is not None]
    winner = max(scored, key=lambda r: (r.val_acc, -r.train_seconds)).strategy if scored else ""
    result = CompareResult(results, adv, winner)
    if is_main():
        atomic_write_bytes(out / "compare.json", json.dumps(result.to_dict(), indent=2).encode())
    return result
