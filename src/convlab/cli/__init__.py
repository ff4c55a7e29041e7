"""The `convlab` command line. Each module in COMMAND_MODULES is named for the commands
it holds and has `register(subparsers)`; every sub-command sets `run(args) -> int`
(and `torchrun=True` when `--nproc` may run it on several processes). Known errors
print one line and exit non-zero.

Building the parser imports no torch: modules import what a command needs inside the
command, so `convlab --help`, `--version`, `datasets` and `recipes` stay quick.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..errors import ConvlabError

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

# The visible list of command modules (in `convlab --help` order).
COMMAND_MODULES = ["catalog", "train", "demo", "inspect", "checks", "augment", "report",
                   "transfer", "backbones", "detect", "export", "teach"]


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="convlab", description="Convolutional networks: train, transfer, inspect, detect, teach.")
    parser.add_argument("--version", action="version", version=f"convlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"convlab: warning: {message}", file=sys.stderr)


def _runner(args: argparse.Namespace):
    """The command's function; a command that may run on several processes (torchrun=True)
    goes through torchrun_command. Commands that train get the process speed settings."""
    if not getattr(args, "torchrun", False):
        return args.run
    from .._runtime import tune_malloc
    from ..training.distributed import torchrun_command

    tune_malloc()
    return torchrun_command(args.run)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `convlab` console script and `python -m convlab`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # re-run under torchrun (--nproc)
    warnings.showwarning = _warning_line
    try:
        return int(_runner(args)(args) or 0)
    except ConvlabError as exc:
        print(f"convlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("convlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
