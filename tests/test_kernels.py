"""The fused BatchNorm -> ReLU -> 2x2 max pool kernel (convlab.kernels) and its use in training."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlab import kernels
from convlab.models import create_model
from convlab.training.speedups import FusedBNReLUPool, training_twin


@pytest.fixture(scope="module", autouse=True)
def built():
    """`make` builds the kernel; on a machine that has a compiler it must be there."""
    if not kernels.available():
        if shutil.which("c++") and shutil.which("ninja"):
            pytest.fail("convlab.kernels is not built: run `python -m convlab.kernels`")
        pytest.skip("no C++ compiler here: convlab.kernels cannot be built")


def _eager(x, w, b, g):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = F.max_pool2d(F.relu(F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)), 2)
    return (y.detach(),) + torch.autograd.grad(y, (x, w, b), g)


def _fused(x, w, b, g):
    bn = nn.BatchNorm2d(x.shape[1], track_running_stats=False)
    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
    x = x.detach().clone().requires_grad_()
    y = kernels.bn_relu_pool2(x, bn)
    return (y.detach(),) + torch.autograd.grad(y, (x, bn.weight, bn.bias), g)


def _data(dtype, n=6, c=16, hw=12):
    torch.manual_seed(0)
    x = (torch.randn(n, c, hw, hw, dtype=torch.float64) * 2 + 0.5).contiguous(memory_format=torch.channels_last)
    w = torch.empty(c, dtype=torch.float64).uniform_(-1, 2)  # negative scales too
    b = torch.empty(c, dtype=torch.float64).uniform_(-0.5, 0.5)
    g = torch.randn(n, c, hw // 2, hw // 2, dtype=torch.float64)
    return x, w, b, g


def test_float32_output_and_gradients_are_at_least_as_close_to_float64_as_eager():
    x, w, b, g = _data(torch.float64)
    ref = _eager(x, w, b, g)
    eager = _eager(x.float(), w.float(), b.float(), g.float())
    fused = _fused(x.float(), w.float(), b.float(), g.float())
    for name, r, e, f in zip(("output", "input grad", "weight grad", "bias grad"), ref, eager, fused):
        err_e = (e.double() - r).abs().max().item()
        err_f = (f.double() - r).abs().max().item()
        assert err_f <= max(2 * err_e, 1e-5), (name, err_f, err_e)
    assert fused[0].is_contiguous(memory_format=torch.channels_last)
    assert fused[1].is_contiguous(memory_format=torch.channels_last)


def test_bfloat16_matches_the_eager_layers_within_bfloat16_rounding():
    x, w, b, g = _data(torch.float64)
    eager = _eager(x.bfloat16(), w.float(), b.float(), g.bfloat16())
    fused = _fused(x.bfloat16(), w.float(), b.float(), g.bfloat16())
    assert fused[0].dtype == fused[1].dtype == torch.bfloat16
    assert (fused[0].float() - eager[0].float()).abs().max() <= 0.02  # one bf16 step at |y| ~ 4
    for e, f in zip(eager[2:], fused[2:]):  # weight and bias gradients
        torch.testing.assert_close(f, e, rtol=0.02, atol=0.05)


def test_ties_send_the_gradient_to_the_first_maximum_like_max_pool():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, :2, :2] = torch.tensor([[1.0, 3.0], [3.0, 3.0]])  # ties after the first maximum
    x[0, 0, 2:, 2:] = torch.tensor([[2.0, 2.0], [2.0, 2.0]])  # a window of equal values
    x = x.contiguous(memory_format=torch.channels_last)
    w, b, g = torch.ones(1), torch.zeros(1), torch.ones(1, 1, 2, 2)
    eager, fused = _eager(x, w, b, g), _fused(x, w, b, g)
    torch.testing.assert_close(fused[0], eager[0])
    torch.testing.assert_close(fused[1], eager[1], rtol=1e-5, atol=1e-6)


def test_running_statistics_follow_batchnorm_including_cumulative_momentum():
    torch.manual_seed(0)
    for momentum, affine in ((0.1, True), (None, True), (0.1, False)):
        a = nn.BatchNorm2d(8, momentum=momentum, affine=affine)
        b = nn.BatchNorm2d(8, momentum=momentum, affine=affine)
        for _ in range(3):
            x = (torch.randn(4, 8, 6, 6) * 3 + 1).contiguous(memory_format=torch.channels_last)
            a(x)
            kernels.bn_relu_pool2(x, b)
        torch.testing.assert_close(b.running_mean, a.running_mean)
        torch.testing.assert_close(b.running_var, a.running_var)
        assert int(b.num_batches_tracked) == int(a.num_batches_tracked) == 3


def test_training_twin_fuses_mnist_cnn_and_leaves_the_model_alone():
    torch.manual_seed(0)
    plain, fast = create_model("mnist_cnn", 10, 1), create_model("mnist_cnn", 10, 1)
    fast.load_state_dict(plain.state_dict())
    before, keys = repr(fast), list(fast.state_dict())
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    F.cross_entropy(plain(x), y).backward()
    with training_twin(fast) as (twin, on):
        assert on and [type(m) for m in twin.traced.modules()].count(FusedBNReLUPool) == 1
        assert twin.traced.fused_bn_relu_pool0.bn is fast.network1[1]  # the user's own layer
        assert repr(fast) == before and list(fast.state_dict()) == keys  # checkpoints the same
        F.cross_entropy(twin(x.contiguous(memory_format=torch.channels_last)), y).backward()
        twin.eval()  # validation inside fit: BatchNorm's running statistics, the layers as they are
        plain.eval()
        torch.testing.assert_close(twin(x), plain(x))
    assert repr(fast) == before and "forward" not in vars(fast.network1[1])
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_blocks_it_cannot_take_are_left_alone():
    import copy

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3),  # 3x3 pool
                          nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    twin_of = copy.deepcopy(model)
    x = torch.randn(2, 3, 23, 23).contiguous(memory_format=torch.channels_last)
    with training_twin(model) as (twin, _):
        fused = [m for m in twin.traced.modules() if isinstance(m, FusedBNReLUPool)]
        assert len(fused) == 1 and fused[0].bn is model[5] and fused[0].pool is model[7]
        # 21x21 -> pool 3 -> 7x7 -> conv -> 5x5: odd, so the layers run as they are
        out, ref = twin(x), twin_of(x)
        torch.testing.assert_close(out, ref)
        out.square().sum().backward()
        ref.square().sum().backward()
    for (name, a), b in zip(twin_of.named_parameters(), model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    assert [type(m) for m in model] == [type(m) for m in twin_of]
    torch.testing.assert_close(model[5].running_mean, twin_of[5].running_mean)


def test_the_switch_turns_fusing_off_in_the_twin(monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", None)  # CONVLAB_KERNELS is read when it loads
    monkeypatch.setenv("CONVLAB_KERNELS", "0")
    assert not kernels.available()
    with training_twin(create_model("mnist_cnn", 10, 1)) as (twin, on):
        assert on and not any(isinstance(m, FusedBNReLUPool) for m in twin.traced.modules())
        assert "ReLU after MaxPool2d at network1.2" in twin.rewritten


def test_module_entry_point_reports_the_built_kernel_and_the_switch_turns_it_off():
    import os

    out = subprocess.run([sys.executable, "-m", "convlab.kernels", "--check"], capture_output=True,
                         text=True, check=True).stdout
    assert "loaded from" in out and "convlab_kernels" in out
    off = subprocess.run([sys.executable, "-m", "convlab.kernels", "--check"], capture_output=True,
                         text=True, env={**os.environ, "CONVLAB_KERNELS": "0"})
    assert off.returncode == 1 and "not loaded" in off.stdout
