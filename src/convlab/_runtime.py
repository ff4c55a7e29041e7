"""Process-level speed settings, applied explicitly by the CLI and by training (never
by `import convlab`).

glibc's malloc returns large freed blocks to the OS and faults them back in on the
next batch; in a training loop that page-faulting takes a large share of every step
(docs/scaling.md). Keeping freed memory mapped fixes it. Set CONVLAB_NO_MALLOC_TUNING=1
to leave malloc alone.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def tune_malloc(enable: bool = True) -> bool:
    """Stop glibc from unmapping and trimming freed memory (enable=False restores glibc's
    defaults, as benchmarks do for their reference). True when applied."""
    global _done
    if enable and _done:
        return True
    if enable and os.environ.get("CONVLAB_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0 if enable else 65536) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, (1 << 30) if enable else 128 * 1024) == 1 and ok
    except (OSError, AttributeError):
        return False
    _done = ok and enable
    return ok


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so that bf16
    autocast is faster than float32 rather than emulated and slower."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def one_thread():
    """Run tiny tensors on one thread: thread hand-offs cost more than they save there
    (on a busy machine each hand-off waits for a thread that may have lost its core)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
