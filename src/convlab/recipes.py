"""Named training recipes: a model, a TrainConfig (schedule, regularisation, augmentation)
and the dataset it was tuned on. `convlab train DATA --recipe NAME` starts from one;
options given on the command line override its values.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ._runtime import cpu_has_bf16
from .config import AugmentConfig, TrainConfig
from .errors import ConfigError, unknown

__all__ = ["Recipe", "RECIPES", "recipe", "list_recipes"]


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str
    config: TrainConfig
    dataset: str
    description: str
    prefer_bf16: bool = False  # bf16 where the CPU computes it natively, else float32


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe(
        "fmnist-94", "fmnist_resnet",
        TrainConfig(epochs=16, batch_size=256, lr=3e-3, optimizer="adam",
                    schedule="one-cycle", peak=0.25, label_smoothing=0.1,
                    val_split=0.0, normalize="channel",
                    augment=AugmentConfig(crop=2, hflip=0.5, erase=0.25)),
        "fashion-mnist",
        "label smoothing 0.1, bf16 where the CPU has it, all 60k images: 94.2% test accuracy",
        prefer_bf16=True),
    Recipe(
        "digit-boxes", "tiny_yolo_face",
        TrainConfig(epochs=50, batch_size=32, lr=4e-3, optimizer="adam", schedule="one-cycle"),
        "digit-boxes",
        "the lecture's TinyYOLOv2 from scratch (region loss, k-means anchors, box-aware "
        "jitter): test mAP50 0.92 in about 10 minutes on 2 cores"),
]}


def list_recipes() -> list[str]:
    return list(RECIPES)


def recipe(name: str) -> Recipe:
    """The recipe called `name`, its precision chosen for this CPU (asking the CPU
    imports torch, so the listing in RECIPES leaves it open)."""
    if name not in RECIPES:
        raise ConfigError(unknown("recipe", name, RECIPES))
    r = RECIPES[name]
    if r.prefer_bf16:
        r = replace(r, config=r.config.replace(precision="bf16" if cpu_has_bf16() else "fp32"))
    return r
