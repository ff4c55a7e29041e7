"""The training twin (convlab.training.speedups): fit trains the user's module through a
faster twin that shares its parameters and buffers, and leaves the module as it was."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlab import Callback, TrainConfig, fit, kernels, load_run
from convlab.models import create_model, default_preprocess
from convlab.training import loop
from convlab.training.speedups import FusedBNReLUPool, TrainingTwin, training_twin

from conftest import make_imageset


class DataDependent(nn.Module):
    """mnist_cnn behind control flow on tensor values, which fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.net = create_model("mnist_cnn", 3, 1)

    def forward(self, x):
        return self.net(x) if x.sum() > 0 else -self.net(x)

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _structure(model: nn.Module) -> list[tuple]:
    """What a callback can see of the module's make-up: each submodule's name and type,
    whether it has a forward of its own (an instance attribute) and hooks."""
    return [(name, type(m), "forward" in vars(m), any(getattr(m, h) for h in _HOOKS))
            for name, m in model.named_modules()]


def _data():
    data = make_imageset(16, 3)
    train, val = data.split(0.25, seed=0)
    pre, _ = default_preprocess("mnist_cnn", 1, 28)
    return train, val, pre


def test_fit_leaves_the_users_module_as_it_was_during_and_after_training(monkeypatch, tmp_path):
    """The issue's 'done when': from a callback in the middle of an epoch, the module
    fit was given has its own submodules in their order and its own forward methods,
    while the twin really runs the rewrites (mnist_cnn: BatchNorm -> ReLU -> pool)."""
    train, val, pre = _data()
    model = create_model("mnist_cnn", 3, 1)
    before = _structure(model)
    assert [(n, t) for n, t, _, _ in before][1:] == [
        ("network1", nn.Sequential), ("network1.0", nn.Conv2d), ("network1.1", nn.BatchNorm2d),
        ("network1.2", nn.ReLU), ("network1.3", nn.MaxPool2d), ("network2", nn.Linear)]
    twins: list[nn.Module] = []
    real_twin = loop.training_twin

    def watched_twin(*args, **kwargs):  # the real one; the test keeps what it yields
        with real_twin(*args, **kwargs) as (twin, channels_last):
            twins.append(twin)
            yield twin, channels_last

    monkeypatch.setattr(loop, "training_twin", contextlib.contextmanager(watched_twin))
    fused_calls = []
    real_kernel = kernels.bn_relu_pool2
    monkeypatch.setattr(kernels, "bn_relu_pool2",
                        lambda x, bn: fused_calls.append(bn) or real_kernel(x, bn))

    seen = []

    class Look(Callback):
        def on_batch_end(self, state):
            if state.epoch == 2 and state.batch == 1:  # mid-epoch: batches 0..4 in each
                seen.append((state.model is model, _structure(state.model)))

    meta = {"model": {"name": "mnist_cnn", "kwargs": {"num_classes": 3, "in_chans": 1}}}
    result = fit(model, train, val, config=TrainConfig(epochs=2, batch_size=8, lr=0.05,
                                                       optimizer="momentum"),
                 preprocess=pre, callbacks=[Look()], run_dir=tmp_path / "run", meta=meta,
                 verbose=False)
    assert seen == [(True, before)]
    assert _structure(model) == before
    assert all(type(m).forward is getattr(m, "forward").__func__ for m in model.modules())
    (twin,) = twins
    assert isinstance(twin, TrainingTwin) and twin.model is model
    if kernels.available():
        assert twin.rewritten == ["fused BatchNorm2d -> ReLU -> MaxPool2d at network1.1"]
        assert fused_calls and all(bn is model.network1[1] for bn in fused_calls)
    else:
        assert "ReLU after MaxPool2d at network1.2" in twin.rewritten
    assert result.history[-1].val_acc == 1.0
    # checkpoints are the user's module: same keys, same tensors
    saved = load_run(tmp_path / "run").model.state_dict()
    assert list(saved) == list(model.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_the_twin_shares_the_users_parameters_and_buffers_and_fit_trains_them():
    train, _, pre = _data()
    model = create_model("mnist_cnn", 3, 1)
    with training_twin(model) as (twin, channels_last):
        assert channels_last and isinstance(twin, TrainingTwin)
        assert {id(t) for t in twin.traced.parameters()} == {id(p) for p in model.parameters()}
        assert {id(t) for t in twin.traced.buffers()} == {id(b) for b in model.buffers()}
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ids = [id(p) for p in model.parameters()]
    fit(model, train, config=TrainConfig(epochs=1, batch_size=8, lr=0.05, optimizer="momentum",
                                         val_split=0), preprocess=pre, verbose=False)
    assert [id(p) for p in model.parameters()] == ids
    after = model.state_dict()
    for k in ("network1.0.weight", "network1.1.weight", "network2.weight",
              "network1.1.running_mean", "network1.1.running_var"):
        assert not torch.equal(after[k], start[k]), k  # trained through the twin
    assert int(after["network1.1.num_batches_tracked"]) == len(train) // 8 + (len(train) % 8 > 0)


def _one_step(model: nn.Module, net: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Loss, gradients, buffers and new weights after one SGD step of `model` through `net`."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1)  # the same dropout masks
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return (loss.detach(), grads, [b.clone() for b in model.buffers()],
            [p.detach().clone() for p in model.parameters()])


def _twins(name: str, chans: int, size: int, channels_last: bool, dtype=torch.float32):
    torch.manual_seed(0)
    plain = create_model(name, 4, chans).to(dtype)
    user = copy.deepcopy(plain)
    x = torch.randn(8, chans, size, size, dtype=dtype)
    x[0, :, :6, :6] = 0.0  # windows of ties at zero
    y = torch.randint(0, 4, (8,))
    if channels_last:  # the layout change training_twin makes; the plain module gets it too
        plain.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return plain, user, x, y


@pytest.mark.parametrize("name,chans,size", [("mnist_cnn", 1, 28), ("alexnet", 3, 63),
                                             ("resnet18", 3, 32)])
def test_one_step_through_the_unfused_twin_is_bit_identical(name, chans, size):
    """ReLU after max pool is exact: the same loss, gradients, BatchNorm statistics and
    updated weights bit for bit, also with in-place ReLUs (alexnet, resnet18's stem)."""
    plain, user, x, y = _twins(name, chans, size, channels_last=False)
    ref = _one_step(plain, plain, x, y)
    with training_twin(user, channels_last=False, fuse=False) as (twin, on):
        assert not on and sum("ReLU after MaxPool2d" in r for r in twin.rewritten) == \
            {"mnist_cnn": 1, "alexnet": 3, "resnet18": 1}[name]
        got = _one_step(user, twin, x, y)
    assert torch.equal(ref[0], got[0])
    for what, a, b in zip(("gradient", "buffer", "weight"), ref[1:], got[1:]):
        for i, (u, v) in enumerate(zip(a, b)):
            assert torch.equal(u, v), (what, i)


def test_one_step_with_channels_last_gradients_matches_the_plain_module():
    """The pooling gradients made channels_last: the same values; later reductions may
    sum in another order, so float32 rounding is the bound (mnist_cnn and alexnet)."""
    for name, chans, size in (("mnist_cnn", 1, 28), ("alexnet", 3, 63)):
        plain, user, x, y = _twins(name, chans, size, channels_last=True)
        ref = _one_step(plain, plain, x, y)
        with training_twin(user, fuse=False) as (twin, on):
            assert on and any("channels_last gradient" in r for r in twin.rewritten)
            got = _one_step(user, twin, x, y)
        assert torch.equal(got[0], ref[0])  # the forward pass is the same computation
        for a, b in zip(ref[1:], got[1:]):
            for u, v in zip(a, b):
                torch.testing.assert_close(v, u)


@pytest.mark.skipif(not kernels.available(), reason="convlab.kernels is not built here")
def test_one_step_through_the_fused_twin_matches_within_the_kernels_rounding():
    """The fused kernel: float32 rounding (the kernel tests bound it against float64),
    the same BatchNorm running statistics and batch count."""
    plain, user, x, y = _twins("mnist_cnn", 1, 28, channels_last=True)
    ref = _one_step(plain, plain, x, y)
    with training_twin(user) as (twin, _):
        assert isinstance(twin.traced.fused_bn_relu_pool0, FusedBNReLUPool)
        got = _one_step(user, twin, x, y)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
    for u, v in zip(ref[1], got[1]):
        torch.testing.assert_close(v, u, rtol=1e-4, atol=1e-5)
    for u, v in zip(ref[2], got[2]):  # running mean, var, num_batches_tracked
        torch.testing.assert_close(v, u)
    # eval mode (validation): the layers themselves, ReLU after the pool (exact)
    twin.eval()
    assert not user.training
    assert torch.equal(twin(x), user(x))


def test_a_hook_added_during_training_fires_and_the_twin_follows_mode_changes():
    """A callback's hook on a module the twin inlines (or rewrites) fires: the twin
    traces afresh with that module as a call of its own."""
    model = create_model("mnist_cnn", 3, 1)
    x = torch.rand(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with training_twin(model) as (twin, _):
        first = twin.traced
        seen = []
        handle = model.network1.register_forward_hook(lambda m, a, out: seen.append(out.shape))
        twin(x)
        assert seen == [torch.Size([4, 32, 14, 14])] and twin.traced is not first
        handle.remove()
        twin(x)
        assert len(seen) == 1 and any("fused" in r or "ReLU after" in r for r in twin.rewritten)
        relu_seen = []
        handle = model.network1[2].register_forward_pre_hook(
            lambda m, a: relu_seen.append(a[0].shape))
        twin(x)
        # the hooked ReLU is no longer rewritten: it sees what it sees in the module itself
        assert relu_seen == [torch.Size([4, 32, 28, 28])]
        assert not any("fused" in r or "ReLU after" in r for r in twin.rewritten)
        handle.remove()
        twin.eval()  # the containers' mode changed: traced afresh, as the module runs in eval
        torch.testing.assert_close(twin(x), model(x))
        assert not model.training and not model.network1.training
    assert [type(m) for m in model.network1] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]


def test_modules_the_twin_cannot_stand_for_run_as_they_are():
    x = torch.rand(2, 1, 28, 28)
    linear = create_model("mnist_linear", 3, 1)
    with training_twin(linear) as (twin, channels_last):
        assert twin is linear and not channels_last  # no convolutions: nothing to gain

    hooked = create_model("mnist_cnn", 3, 1)
    calls = []
    hooked.register_forward_hook(lambda m, a, out: calls.append(1))  # on the root
    with training_twin(hooked) as (twin, channels_last):
        assert twin is hooked and channels_last
        assert hooked.network1[0].weight.is_contiguous(memory_format=torch.channels_last)
        twin(x)
    assert calls == [1]

    model = DataDependent()
    with training_twin(model) as (twin, _):
        assert twin is model
        twin(x)

    class Stash(nn.Module):  # a forward that stores an attribute cannot be a graph
        def __init__(self):
            super().__init__()
            self.net = create_model("mnist_cnn", 3, 1)

        def forward(self, x):
            self.last = x
            return self.net(x)

    model = Stash()
    with training_twin(model) as (twin, _):
        assert twin is model and "last" not in vars(model)  # nothing left from tracing
        twin(x)
        assert model.last is x


def test_global_module_hooks_make_the_twin_run_the_module_itself():
    model = create_model("mnist_cnn", 3, 1)
    x = torch.rand(2, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    names = {m: n for n, m in model.named_modules()}
    called = []
    with training_twin(model) as (twin, _):
        handle = nn.modules.module.register_module_forward_hook(
            lambda m, a, out: called.append(names.get(m)))
        try:
            twin(x)
        finally:
            handle.remove()
    assert called == ["network1.0", "network1.1", "network1.2", "network1.3", "network1",
                      "network2", "", None]  # None: the twin


def test_sync_bn_replaces_the_batchnorms_in_the_twin_only():
    """With sync-bn the twin's BatchNorms are synchronised ones holding the user's
    parameters and buffers; the user's module keeps its own (in one process they
    compute plain BatchNorm, so the outputs agree)."""
    from convlab.training.distributed import GlobalBatchNorm

    model = create_model("mnist_cnn", 3, 1)
    plain = copy.deepcopy(model).to(memory_format=torch.channels_last)
    before = _structure(model)
    x = torch.rand(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with training_twin(model, sync_bn=torch.device("cpu")) as (twin, _):
        (bn,) = [m for m in twin.traced.modules() if isinstance(m, GlobalBatchNorm)]
        assert bn.weight is model.network1[1].weight
        assert bn.running_mean is model.network1[1].running_mean
        assert not any("fused" in r for r in twin.rewritten)  # not with sync-bn
        assert _structure(model) == before
        torch.testing.assert_close(twin(x), plain(x))
        torch.testing.assert_close(model.network1[1].running_mean, plain.network1[1].running_mean)
        model.network1[1].eval()  # as fine-tuning's FreezeBatchNorm does
        twin(x)
        (bn,) = [m for m in twin.traced.modules() if isinstance(m, GlobalBatchNorm)]
        assert not bn.training  # the twin's BatchNorm follows the user's mode
    assert _structure(model) == before


def test_sync_bn_on_an_untraceable_module_is_undone_after_training():
    from convlab.training.distributed import GlobalBatchNorm

    model = DataDependent()
    bn = model.net.network1[1]
    with training_twin(model, sync_bn=torch.device("cpu")) as (twin, _):
        assert isinstance(model.net.network1[1], GlobalBatchNorm)
        assert model.net.network1[1].weight is bn.weight
    assert model.net.network1[1] is bn


def test_modules_called_from_another_thread_while_the_twin_traces_run_as_usual():
    """fx patches nn.Module.__call__ for the whole process while it traces; a module
    called meanwhile by another thread (the teach server's previews during a job's fit)
    must run as it always does."""
    import threading

    probe = nn.Linear(3, 2)
    results = []

    class TracedWhileAnotherThreadCalls(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = create_model("mnist_cnn", 3, 1)

        def forward(self, x):
            def other():
                try:
                    results.append(probe(torch.ones(1, 3)).shape)
                except Exception as exc:  # what fx's patched __call__ raised here
                    results.append(exc)

            worker = threading.Thread(target=other)
            worker.start()
            worker.join()
            return self.net(x)

    model = TracedWhileAnotherThreadCalls()
    with training_twin(model) as (twin, _):
        assert isinstance(twin, TrainingTwin) and twin.rewritten  # it was traced
    assert results == [torch.Size([1, 2])]
