"""A progress bar with rate and ETA for long jobs (tqdm), quiet when not on a terminal."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(total: int, desc: str = "", unit: str = "it", enabled: bool = True, **kw) -> tqdm:
    """A bar that shows count, rate and ETA on a terminal and nothing in logs."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                disable=(not enabled) or not sys.stderr.isatty(), file=sys.stderr, **kw)
