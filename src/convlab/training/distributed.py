"""Several processes through PyTorch's own distributed engine.

`convlab train ... --nproc N` re-runs the same command under torch.distributed.run
(torchrun); each copy then joins the process group torchrun describes in its
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK): gloo on CPU,
NCCL for CUDA tensors. The fit loop wraps the model in DistributedDataParallel; the
helpers here answer "which rank am I", sum small tensors across ranks, and keep
rank 0 in charge of the run directory. Nothing here is a launcher or an all-reduce
of our own: torchrun starts and watches the processes, torch.distributed reduces.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, DistributedError

__all__ = ["world", "alone", "is_main", "all_reduce_sum", "local_rank", "launched_by_torchrun",
           "backend_for", "process_group", "main_first", "barrier", "broadcast_buffers",
           "broadcast_from_main", "gather_shares", "same_everywhere",
           "peer_lost", "launch", "relaunch_with_torchrun", "sync_batchnorm", "GlobalBatchNorm", "torchrun_command"]

# What torchrun exports to every process it starts.
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


_alone = threading.local()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised (or inside
    `alone()`)."""
    if dist.is_available() and dist.is_initialized() and not getattr(_alone, "on", False):
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside the block this process works as if it were the only one (evaluate()
    reduces nothing): for rank-0-only work such as writing a run's plots, which the
    other ranks do not join."""
    before = getattr(_alone, "on", False)
    _alone.on = True
    try:
        yield
    finally:
        _alone.on = before


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that prints and writes."""
    return world()[0] == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op in one process)."""
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order (just [obj] in one process, or inside
    alone())."""
    if world()[1] > 1:
        out = [None] * world()[1]
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if world()[1] > 1:
        dist.barrier()


def local_rank() -> int:
    """This process's index on its own machine (torchrun's LOCAL_RANK; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (it sets RANK, WORLD_SIZE, MASTER_*)."""
    return all(k in os.environ for k in _TORCHRUN_ENV)


def backend_for(device: torch.device) -> str:
    """gloo for CPU tensors; on CUDA, NCCL for CUDA tensors with gloo beside it for the
    small CPU tensors (metric counts) the loop reduces."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


_stop = threading.Event()  # set once this process knows the run is over


def _raise_interrupt(signum, frame) -> None:
    # torchrun stops the other processes with SIGTERM when one fails: turn it into the
    # same clean stop as Ctrl-C (the fit loop keeps the last complete epoch and says so),
    # unless this process is already stopping with its own message.
    if not _stop.is_set():
        _stop.set()
        raise KeyboardInterrupt


@contextlib.contextmanager
def process_group(device: torch.device | str = "cpu") -> Iterator[tuple[int, int]]:
    """Join the process group torchrun set up for this process, for the duration of
    the block; yields (rank, world size). Outside torchrun (or when a group already
    exists) this does nothing and yields the current (rank, world size)."""
    device = torch.device(device)
    if not launched_by_torchrun() or dist.is_initialized():
        yield world()
        return
    _stop.clear()
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend_for(device))
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield world()
    finally:
        signal.signal(signal.SIGTERM, old)
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (for work on the run
    directory such as finishing an interrupted save, which must not race)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DistributedDataParallel broadcasts them at the start of each forward pass, so
    after the last training batch every rank holds its own update. Evaluation and
    the saved weights must use one set: rank 0's, the one that is saved."""
    if world()[1] > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def same_everywhere(value: int) -> tuple[int, int]:
    """(smallest, largest) of an integer over the ranks; equal when all ranks agree."""
    if world()[1] == 1:
        return value, value
    t = torch.tensor([-value, value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return -int(t[0]), int(t[1])


def broadcast_from_main(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Rank 0's CPU tensor `t` (any shape) on every rank; the others pass None."""
    rank, size = world()
    if size == 1:
        return t
    header = torch.zeros(9, dtype=torch.int64)  # ndim, then up to 8 sizes
    if rank == 0:
        header[0] = t.dim()
        header[1:1 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
    dist.broadcast(header, src=0)
    shape = header[1:1 + int(header[0])].tolist()
    out = t.to(dtype).contiguous() if rank == 0 else torch.empty(shape, dtype=dtype)
    dist.broadcast(out, src=0)
    return out


def gather_shares(mine: torch.Tensor, total: int) -> torch.Tensor:
    """Every rank's share of `total` rows (rank r computed rows r, r+size, ...; `mine`
    is (its share, ...)) put back in order on every rank: (total, ...)."""
    rank, size = world()
    if size == 1:
        return mine
    per = -(-total // size)
    padded = mine.new_zeros((per, *mine.shape[1:]))
    padded[:len(mine)] = mine
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    out = mine.new_empty((total, *mine.shape[1:]))
    for r, part in enumerate(parts):
        out[r::size] = part[:len(range(r, total, size))]
    return out


def peer_lost(exc: BaseException) -> bool:
    """True when `exc` means another process of the group went away (gloo/NCCL error)."""
    if world()[1] <= 1:
        return False
    text = str(exc)
    lost = isinstance(exc, getattr(dist, "DistError", ())) or any(
        s in text for s in ("closed by peer", "Connection reset", "Broken pipe",
                            "NCCL communicator was aborted"))
    if lost:
        _stop.set()  # torchrun's SIGTERM must not cut the message this process is about to give
    return lost


def launch(argv: Sequence[str], nproc: int, *, module: str = "convlab") -> int:
    """Run `python -m convlab ARGV` as `nproc` local processes under torchrun
    (torch.distributed.run, standalone rendezvous on this machine).

    Returns 0 when every process succeeded; raises DistributedError naming the first
    process that failed (its own error line is printed above, torchrun stopped the
    rest), or KeyboardInterrupt on Ctrl-C (torchrun forwards it to the processes,
    which keep their last complete epoch)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1; got {nproc}")
    if "OMP_NUM_THREADS" not in os.environ:
        # torchrun would set 1 thread per process; share the machine's cores instead
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    args = torchrun.get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", module])
    args.training_script_args = list(argv)  # passed on as given, never parsed by torchrun
    # the processes print their own errors; torchrun's log lines would repeat them
    for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code == 130:
            raise KeyboardInterrupt from None
        how = f"was stopped by signal {-code}" if code < 0 else f"failed with exit code {code}"
        err = DistributedError(f"process {rank} of {nproc} {how} (its message is above); "
                               f"torchrun stopped the others")
        err.exit_code = code if code > 0 else DistributedError.exit_code
        raise err from None
    except SignalException:
        raise KeyboardInterrupt from None
    return 0


def relaunch_with_torchrun(argv: Sequence[str] | None, nproc: int | None) -> int | None:
    """For `--nproc N` commands: re-run them under torchrun with N processes and return
    the exit code; None when this process should do the work itself (N <= 1, or it
    already is one of torchrun's processes)."""
    if nproc is None or nproc == 1:
        return None
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1; got {nproc}")
    if launched_by_torchrun():
        size = int(os.environ["WORLD_SIZE"])
        if size != nproc and int(os.environ.get("RANK", "0")) == 0:
            print(f"convlab: warning: --nproc {nproc} ignored; torchrun started {size} processes",
                  file=sys.stderr)
        return None
    return launch(list(argv if argv is not None else sys.argv[1:]), nproc)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch, on any device.

    PyTorch's SyncBatchNorm has CUDA kernels only; this one sums each channel's count,
    sum and sum of squares (float64) with torch.distributed.nn's differentiable
    all_reduce, so gradients flow through the shared statistics as they do in one
    process. Same parameters, buffers and state-dict keys as nn.BatchNorm*d; in eval
    mode or in one process it is plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._normalize(x)
        if "act" in self._modules:  # converted from a norm + activation layer (timm)
            y = self.act(self.drop(y))
        return y

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world()[1] > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xd = x.double()
        local = torch.cat([xd.sum(dims), (xd * xd).sum(dims),  # (C,), (C,)
                           xd.new_full((1,), x.numel() // max(c, 1))])
        with warnings.catch_warnings():  # deprecated in favour of a private module
            warnings.simplefilter("ignore", FutureWarning)
            total = all_reduce(local)                             # summed over ranks
        count = total[-1]
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean * mean).clamp(min=0)  # biased, as BatchNorm
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with its trainable BatchNorm layers computing statistics over the whole
    global batch (all ranks) instead of each rank's share: PyTorch's SyncBatchNorm on
    CUDA, GlobalBatchNorm elsewhere. Layers keep their Parameter objects and state-dict
    keys; frozen ones (weights not trained, e.g. fine-tuning's eval-mode BatchNorm) are
    left as they are, so whoever holds them still does."""
    # timm's norm + activation layers (BatchNormAct2d) keep their `act` and `drop`
    norm_act = all(isinstance(model._modules.get(k), nn.Module) for k in ("act", "drop"))
    plain = type(model) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    trained = getattr(model, "weight", None) is None or model.weight.requires_grad
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and (plain or norm_act) and trained:
        if device.type != "cuda":
            new_type = GlobalBatchNorm
        elif norm_act:
            from timm.layers.norm_act import SyncBatchNormAct as new_type
        else:
            new_type = nn.SyncBatchNorm
        new = new_type(model.num_features, model.eps, model.momentum, model.affine,
                       model.track_running_stats)
        if norm_act:
            new.act, new.drop = model.act, model.drop
        if model.affine:
            new.weight, new.bias = model.weight, model.bias
        if model.track_running_stats:
            new.running_mean, new.running_var = model.running_mean, model.running_var
            new.num_batches_tracked = model.num_batches_tracked
        new.train(model.training)
        return new
    for name, child in model.named_children():
        model.add_module(name, sync_batchnorm(child, device))
    return model


def _device_type(device: str | torch.device) -> torch.device:
    name = str(device)
    cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if cuda else "cpu")


def torchrun_command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Make a CLI command (with --nproc and --device options) run on several processes.

    With `--nproc N` (N > 1) the command re-runs itself under torchrun; in a process
    started by torchrun (by `--nproc` or by the user's own `torchrun ... -m convlab`)
    it joins the process group for its duration, and only rank 0 writes to stdout."""
    @functools.wraps(run)
    def command(args: argparse.Namespace) -> int:
        code = relaunch_with_torchrun(getattr(args, "argv", None), getattr(args, "nproc", 1))
        if code is not None:
            return code
        with process_group(_device_type(getattr(args, "device", "cpu"))) as (rank, _):
            if rank == 0:
                return run(args)
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                return run(args)
    return command
