"""Errors convlab raises for bad input. Each message says what was wrong and what would be valid."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConvlabError", "DatasetError", "ModelError", "CheckpointError", "ConfigError",
    "TrainingError", "TrainingInterrupted", "DistributedError", "ForwardFailed", "LayerReached",
    "NotFound", "Conflict", "TooLarge", "UnsupportedImage", "closest", "unknown",
]


class ConvlabError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero."""

    exit_code = 2


class DatasetError(ConvlabError):
    """A dataset is unknown, missing, corrupt or unsuitable."""


class ModelError(ConvlabError):
    """A model name, its arguments or its weights are wrong."""


class CheckpointError(ConvlabError):
    """A run directory is missing, incomplete or does not fit the request."""


class ConfigError(ConvlabError):
    """Options conflict or are out of range."""


class TrainingError(ConvlabError):
    """Training could not go on (for example the loss became NaN)."""

    exit_code = 3


class TrainingInterrupted(ConvlabError):
    """Ctrl-C during training; the last complete epoch is saved."""

    exit_code = 130


class DistributedError(ConvlabError):
    """A process of a multi-process run failed; the others were stopped."""

    exit_code = 3


class ForwardFailed(RuntimeError):
    """The forward pass raised inside `layer` (whose input had shape `input_shape`).

    Not a ConvlabError: callers turn it into a ModelError with what they know of the
    input (inspect says which input size would be valid)."""

    def __init__(self, layer: str, layer_type: str, input_shape: tuple[int, ...], error: Exception):
        super().__init__(f"{layer} ({layer_type}): {error}")
        self.layer, self.layer_type, self.input_shape, self.error = layer, layer_type, input_shape, error


class LayerReached(Exception):
    """Raised by a forward hook to end a forward pass once the wanted layer has run
    (control flow inside convlab.analysis; it never reaches a user)."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the nearest of `choices`, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]}?)" if match else ""


def unknown(kind: str, name: str, choices: Iterable[str], hint: str = "") -> str:
    """The message for an unknown name: the closest match and every valid choice."""
    choices = sorted(choices)
    return (f"unknown {kind} '{name}'{closest(name, choices)}; valid: {', '.join(choices)}"
            + (f"; {hint}" if hint else ""))


class NotFound(ConvlabError):
    """A project, class, sample, model or file id that does not exist."""


class Conflict(ConvlabError):
    """The request clashes with the current state (a duplicate name, a running job)."""


class TooLarge(ConvlabError):
    """An upload over the byte or pixel limit."""


class UnsupportedImage(DatasetError):
    """A file that is not an accepted image format (judged by its content)."""
