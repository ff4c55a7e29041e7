"""convlab's own CPU kernel: BatchNorm -> ReLU -> 2x2 max pool in training, fused.

The block Conv -> BatchNorm -> ReLU -> MaxPool(2) is the lecture's (mnist_cnn) and VGG's.
In eager PyTorch its three layers make six passes over the full-resolution activations
and keep three of them for backward (BatchNorm's output, the pool's int64 indices). The
fused kernel (bn_relu_pool.cpp) makes one statistics pass and one pooling pass forward,
and two passes backward (the first over pooled-size arrays only); it keeps the pooled
output, one byte of window position and the input value there. Fewer passes over the
activations make it several times faster than the three ATen layers, and its float64
statistics keep it at least as close to a float64 reference as they are
(tests/test_kernels.py). Training uses it through convlab.training.speedups.

It is compiled once, at install time (`python -m convlab.kernels`, which the Makefile
runs), against the installed torch, into the environment's share/convlab/kernels. At run
time it is only loaded, never compiled; without it (no C++ compiler, or
CONVLAB_KERNELS=0) training runs the same model in eager PyTorch.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import torch

__all__ = ["SOURCE", "kernel_dir", "build", "available", "bn_relu_pool2"]

SOURCE = Path(__file__).with_name("bn_relu_pool.cpp")
_NAME = "convlab_kernels"
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_loaded: bool | None = None


def kernel_dir() -> Path:
    """Where the compiled kernel lives: keyed by the source, torch's version and the
    flags and the CPU's instruction sets (it is built with -march=native), so a change to
    any of them builds anew. In a virtual environment it is
    <venv>/share/convlab/kernels/<key>, otherwise ~/.cache/convlab/kernels/<key>."""
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode()
                         + " ".join(_CFLAGS).encode() + _cpu_flags()).hexdigest()[:16]
    root = (Path(sys.prefix) / "share" / "convlab" / "kernels" if sys.prefix != sys.base_prefix
            else Path.home() / ".cache" / "convlab" / "kernels")
    return root / key


def _cpu_flags() -> bytes:
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((line for line in f if line.startswith(b"flags")), b"")
    except OSError:
        return b""


def _library() -> Path:
    return kernel_dir() / f"{_NAME}.so"


def build(verbose: bool = False) -> Path:
    """Compile the kernel for this machine (C++ compiler and ninja needed) and load it;
    returns the library's path. Raises RuntimeError when it cannot."""
    global _loaded
    import logging

    # it looks for CUDA on import and warns when there is none; a CPU kernel needs none
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import load

    out = kernel_dir()
    out.mkdir(parents=True, exist_ok=True)
    load(name=_NAME, sources=[str(SOURCE)], build_directory=str(out), extra_cflags=_CFLAGS,
         extra_ldflags=["-fopenmp"], is_python_module=False, verbose=verbose)
    _loaded = True
    if sys.prefix != sys.base_prefix:  # this environment's own builds: drop the outdated ones
        import shutil

        for old in out.parent.iterdir():
            if old != out and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return _library()


def available() -> bool:
    """Whether the fused kernel is loaded (loading it, once, when it has been built)."""
    global _loaded
    if _loaded is None:
        _loaded = False
        if os.environ.get("CONVLAB_KERNELS", "1") != "0" and _library().is_file():
            try:
                torch.ops.load_library(str(_library()))
                _loaded = True
            except (OSError, RuntimeError):  # built against another torch or machine
                pass
    return _loaded


class _BNReLUPool2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        out, idx, xmax, mean, invstd = torch.ops.convlab.bn_relu_pool2_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, idx, xmax, out, mean, invstd, weight)
        return out, mean, invstd

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _mean_grad, _invstd_grad):
        x, idx, xmax, out, mean, invstd, weight = ctx.saved_tensors
        dx, dw, db = torch.ops.convlab.bn_relu_pool2_backward(grad, x, idx, xmax, out, mean,
                                                              invstd, weight)
        return (dx, dw if ctx.needs_input_grad[1] else None,
                db if ctx.needs_input_grad[2] else None, None)


def bn_relu_pool2(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """max_pool2d(relu(bn(x)), 2) for a BatchNorm in training mode, fused; updates `bn`'s
    running statistics as BatchNorm does. x: channels_last, float32 or bfloat16, on the
    CPU, even height and width (see `fusable`)."""
    if not available():
        raise RuntimeError("convlab's fused kernel is not loaded: CONVLAB_KERNELS=0 is set, or "
                           "it is not built here (run `python -m convlab.kernels`; it needs g++ "
                           "and ninja)")
    out, mean, invstd = _BNReLUPool2.apply(x, bn.weight, bn.bias, bn.eps)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                      else bn.momentum)
            n = x.numel() // x.shape[1]
            var = (1.0 / invstd.double().square() - bn.eps) * (n / max(n - 1, 1))
            bn.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            bn.running_var.mul_(1 - factor).add_(var.to(bn.running_var.dtype), alpha=factor)
    return out


def fusable(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> bool:
    """Whether bn_relu_pool2 takes this input (else run the three layers as they are)."""
    return (bn.training and x.device.type == "cpu" and x.dim() == 4
            and x.dtype in (torch.float32, torch.bfloat16)
            and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
            and x.is_contiguous(memory_format=torch.channels_last)
            and (bn.weight is None or bn.weight.dtype == torch.float32) and available())


def main() -> None:
    """python -m convlab.kernels [--check]: build the kernel (or say whether it is built)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m convlab.kernels", description=main.__doc__)
    ap.add_argument("--check", action="store_true", help="only say whether it is built and loads")
    ap.add_argument("--verbose", action="store_true", help="show the compiler's commands")
    args = ap.parse_args()
    if args.check:
        ok = available()
        why = ("CONVLAB_KERNELS=0" if os.environ.get("CONVLAB_KERNELS", "1") == "0"
               else "not built: run python -m convlab.kernels")
        print(f"convlab kernels: {'loaded from ' + str(_library()) if ok else 'not loaded (' + why + ')'}")
        sys.exit(0 if ok else 1)
    t0 = time.perf_counter()
    try:
        path = build(args.verbose)
    except (RuntimeError, OSError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"convlab kernels: not built ({first}); training runs in eager PyTorch, "
              f"slower for BatchNorm -> ReLU -> max pool blocks", file=sys.stderr)
        sys.exit(1)
    print(f"convlab kernels: built {path} in {time.perf_counter() - t0:.0f} s")
