"""Configuration as frozen dataclasses; each is saved into a run's meta.json."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .errors import ConfigError

__all__ = ["TrainConfig", "AugmentConfig", "TransferConfig", "OPTIMIZERS", "LOSSES", "SCHEDULES",
           "INITS", "NORMALIZE", "MONITORS", "PRECISIONS", "STRATEGIES", "HEAD_KINDS",
           "EXPORT_FORMATS"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
LOSSES = ("cross-entropy", "mse", "hinge")
SCHEDULES = ("constant", "step", "exponential", "inverse-time", "sqrt", "exp", "cosine", "one-cycle")
INITS = ("default", "gaussian", "xavier", "kaiming")
NORMALIZE = ("model", "channel", "image")
MONITORS = ("val_loss", "val_acc")
PRECISIONS = ("auto", "fp32", "bf16")
STRATEGIES = ("features", "finetune", "full", "scratch")   # transfer learning
HEAD_KINDS = ("linear", "mlp", "knn", "svm")               # heads on frozen features
EXPORT_FORMATS = ("onnx", "torchscript")


@dataclass(frozen=True)
class AugmentConfig:
    """Live training-time augmentation; every field at its default means 'off'."""

    crop: int = 0                   # random crop after zero-padding this many pixels per side
    resized_crop: float = 0.0       # random-resized crop: smallest area fraction (0 = off)
    hflip: float = 0.0              # probability of a horizontal flip
    vflip: float = 0.0              # probability of a vertical flip
    translate: float = 0.0          # largest shift, as a fraction of the image side
    rotate: float = 0.0             # largest rotation, degrees either way
    jitter: float = 0.0             # colour jitter strength (brightness, contrast, saturation)
    lighting: float = 0.0           # AlexNet PCA lighting noise, std of the eigen-coefficients
    erase: float = 0.0              # probability of random erasing (one rectangle per image)

    def __post_init__(self) -> None:
        if self.crop < 0:
            raise ConfigError(f"crop padding must be >= 0 pixels; got {self.crop}")
        if not 0.0 <= self.resized_crop < 1.0:
            raise ConfigError(f"resized-crop smallest area must be in [0, 1) (0 = off); "
                              f"got {self.resized_crop}")
        for name in ("hflip", "vflip", "erase"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} is a probability in [0, 1]; got {getattr(self, name)}")
        if not 0.0 <= self.translate < 0.5:
            raise ConfigError(f"translate must be in [0, 0.5) of the image side; got {self.translate}")
        if not 0.0 <= self.rotate <= 180.0:
            raise ConfigError(f"rotate must be in [0, 180] degrees; got {self.rotate}")
        for name in ("jitter", "lighting"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} strength must be >= 0; got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return self != AugmentConfig()

    def describe(self) -> str:
        """'crop=4, hflip=0.5' for the fields that are on, or 'none'."""
        on = [f"{f.name}={getattr(self, f.name):g}" for f in fields(self)
              if getattr(self, f.name) != f.default]
        return ", ".join(on) or "none"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained (not what model or data)."""

    epochs: int = 2                 # passes over the training split
    batch_size: int = 100           # images per optimizer step (global, across ranks)
    lr: float = 3e-3                # step size (the peak of the default one-cycle schedule)
    optimizer: str = "adam"         # sgd | momentum | nesterov | adam | adamw
    momentum: float = 0.9           # for momentum and nesterov
    weight_decay: float = 0.0       # L2 penalty (decoupled for adamw)
    loss: str = "cross-entropy"     # cross-entropy | mse (on softmax) | hinge (multi-class margin)
    val_split: float = 0.1          # fraction held out for validation (0 = none)
    seed: int = 0                   # weights, split and batch order
    channels_last: bool = True      # NHWC memory layout for 4-D conv activations
    sync_bn: bool = False           # BatchNorm statistics over the global batch across ranks
    precision: str = "auto"         # fp32 | bf16 (autocast) | auto: bf16 on CUDA, fp32 on CPU
    # schedule: lr x lr_factor(t) before every step (training/schedules.py)
    schedule: str = "one-cycle"     # constant | step | exponential | inverse-time | sqrt | exp | cosine | one-cycle
    warmup: float = 0.0             # epochs of linear warm-up from 0 (any schedule)
    peak: float = 0.25              # one-cycle: fraction of the run spent warming up to lr
    step_every: int = 10            # step: decay every this many epochs (or batches)
    step_unit: str = "epoch"        # step: 'epoch' or 'batch'
    step_gamma: float = 0.1         # step: factor per decay
    exp_gamma: float = 0.97         # exponential: factor per epoch
    decay: float = 1.0              # inverse-time 1/(1+k t) and exp(-k t): k per epoch
    # regularisation (training/regularize.py)
    label_smoothing: float = 0.0    # cross-entropy target smoothing
    l1: float = 0.0                 # L1 strength (proximal step after each update)
    max_norm: float = 0.0           # max L2 norm of each unit's incoming weights (0 = off)
    dropout: float | None = None    # dropout rate on models with dropout (None = model's own)
    patience: int = 0               # early stopping after this many epochs without improvement
    monitor: str = "val_loss"       # early stopping watches val_loss or val_acc
    min_delta: float = 0.0          # smallest change that counts as an improvement
    init: str = "default"           # default (PyTorch's) | gaussian (std 0.001) | xavier | kaiming
    init_bias: float = 0.0          # bias constant when init is not default
    # preprocessing and augmentation (data/augment.py)
    normalize: str = "model"        # model (registry's mean/std) | channel | image (from train split)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):  # from meta.json
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))
        self.validate()

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1; got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1; got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive; got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer '{self.optimizer}'; valid: {', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss '{self.loss}'; valid: {', '.join(LOSSES)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight decay must be >= 0; got {self.weight_decay}")
        if not 0.0 <= self.val_split < 1.0:
            raise ConfigError(f"validation split must be in [0, 1); got {self.val_split}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}'; valid: {', '.join(PRECISIONS)}")
        self._validate_craft()

    def _validate_craft(self) -> None:
        """Schedules, regularisation and their conflicts, refused before any training."""
        def choice(name: str, valid: tuple[str, ...]) -> None:
            if getattr(self, name) not in valid:
                raise ConfigError(f"unknown {name.replace('_', ' ')} '{getattr(self, name)}'; "
                                  f"valid: {', '.join(valid)}")
        choice("schedule", SCHEDULES)
        choice("step_unit", ("epoch", "batch"))
        choice("monitor", MONITORS)
        choice("init", INITS)
        choice("normalize", NORMALIZE)
        if not 0 <= self.warmup < self.epochs:
            raise ConfigError(f"warm-up must be >= 0 and shorter than the run ({self.epochs} "
                              f"epochs); got {self.warmup}")
        if not 0.0 < self.peak < 1.0:
            raise ConfigError(f"one-cycle peak is a fraction of the run in (0, 1); got {self.peak}")
        if self.step_every < 1:
            raise ConfigError(f"step schedule: step every must be at least 1; got {self.step_every}")
        if self.schedule == "step" and self.step_unit == "epoch" and self.step_every >= self.epochs:
            raise ConfigError(f"step schedule decays every {self.step_every} epochs but the run has "
                              f"{self.epochs}; it would never decay: lower --step-every or use "
                              f"--step-unit batch")
        for name in ("step_gamma", "exp_gamma"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{name.replace('_', ' ')} must be in (0, 1]; got {getattr(self, name)}")
        if self.decay < 0:
            raise ConfigError(f"decay rate must be >= 0; got {self.decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label smoothing must be in [0, 1); got {self.label_smoothing}")
        if self.label_smoothing and self.loss != "cross-entropy":
            raise ConfigError(f"label smoothing works with the cross-entropy loss, not '{self.loss}'")
        if self.l1 < 0 or self.max_norm < 0:
            raise ConfigError(f"l1 and max-norm must be >= 0; got l1={self.l1}, "
                              f"max_norm={self.max_norm}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout rate must be in [0, 1); got {self.dropout}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0 epochs (0 = no early stopping); got {self.patience}")
        if self.patience and self.val_split == 0:
            raise ConfigError("early stopping (--patience) needs a validation split to watch; "
                              "set --val-split above 0 or drop --patience")
        if self.init_bias and self.init == "default":
            raise ConfigError("--init-bias sets biases when an --init scheme is chosen "
                              "(gaussian, xavier, kaiming); the default init keeps PyTorch's biases")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes) -> TrainConfig:
        return replace(self, **changes)


@dataclass(frozen=True)
class TransferConfig:
    """What a transfer run does beyond the training loop's TrainConfig; saved in meta.json."""

    strategy: str = "features"          # features | finetune | full | scratch
    backbone: str = "efficientnet_lite0"  # a registered model with pretrained weights
    weights: str | None = None          # a state-dict file instead of the bundled weights
    layer: str | None = None            # features: take this layer instead of the pre-logits
    image_size: int | None = None       # input size (default the backbone's own: 224-260)
    head: str = "linear"                # features: linear | mlp | knn | svm
    k: int = 5                          # knn: neighbours
    hidden: tuple[int, ...] = (256,)    # mlp: hidden units (one or two layers)
    dropout: float = 0.2                # mlp: dropout after each hidden layer
    svm_c: float = 1.0                  # svm: inverse regularisation strength C
    l2: float = 1e-3                    # linear/mlp: L2 penalty on the head's weights
    unfreeze: int = 2                   # finetune: last blocks trained (0 = classifier only)
    backbone_lr: float = 0.1            # finetune/full: backbone lr as a fraction of --lr

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy '{self.strategy}'; valid: {', '.join(STRATEGIES)}"
                              f", or compare")
        if self.head not in HEAD_KINDS:
            raise ConfigError(f"unknown head '{self.head}'; valid: {', '.join(HEAD_KINDS)}")
        if self.unfreeze < 0:
            raise ConfigError(f"--unfreeze must be >= 0; got {self.unfreeze}")
        if not 0 < self.backbone_lr <= 1:
            raise ConfigError(f"--backbone-lr must be in (0, 1]; got {self.backbone_lr}")
        if self.image_size is not None and self.image_size < 32:
            raise ConfigError(f"--image-size must be at least 32; got {self.image_size}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        # the backbone name is checked against the model registry by transfer() itself

    def head_options(self) -> dict:
        return {"linear": {"l2": self.l2}, "svm": {"c": self.svm_c}, "knn": {"k": self.k},
                "mlp": {"hidden": self.hidden, "dropout": self.dropout, "l2": self.l2}}[self.head]
