"""Sanity checks: the overfit check and gradcheck."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convlab import ImageSet, ModelError, create_model, gradcheck
from convlab.cli import main
from convlab.training.run import model_for_data
from convlab.training.sanity import overfit, overfit_subset

from conftest import make_imageset


# tiny tensors: one thread is many times faster than two on a shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")


def noise_set(n: int = 40, classes: int = 4, seed: int = 0) -> ImageSet:
    """Pure noise with random labels: only memorising can get these right."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 12, 12), generator=gen, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return ImageSet(images, labels, [f"c{i}" for i in range(classes)], "noise")


def test_overfit_memorises_20_noise_images():
    data = noise_set()
    torch.manual_seed(0)
    model, pre, _ = model_for_data("mnist_cnn", data)
    r = overfit(model, data, pre, n=20, lr=0.05, max_epochs=200, verbose=False)
    assert r.reached and r.n == 20
    assert r.accuracies[-1] == 1.0 and all(a < 1.0 for a in r.accuracies[:-1])
    assert 1 < r.epochs == len(r.losses) < 200
    assert r.losses[-1] < r.losses[0]
    assert "reached 100% training accuracy on 20 images" in r.message


def test_overfit_failure_says_why():
    data = noise_set()
    torch.manual_seed(0)
    model, pre, _ = model_for_data("mnist_cnn", data)
    r = overfit(model, data, pre, n=20, lr=200.0, max_epochs=15, verbose=False)
    assert not r.reached and r.epochs <= 15
    assert "did NOT reach" in r.message and "too high" in r.message


def test_overfit_subset_takes_every_class_of_a_sorted_set():
    data = make_imageset(n_per_class=10, classes=4)  # sorted by class
    sub = overfit_subset(data, 8)
    assert sub.class_counts().tolist() == [2, 2, 2, 2]
    assert torch.equal(sub.images[0], data.images[0])  # the first image of each class first


def test_overfit_cli_reports_epochs(capsys, tmp_path):
    from conftest import write_folder
    write_folder(tmp_path / "pics", n_per_class=6, classes=("cat", "dog", "owl"), size=12)
    assert main(["overfit", str(tmp_path / "pics"), "--model", "mnist_cnn", "--channels", "1",
                 "-n", "9", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "reached 100% training accuracy on 9 images after" in out


def test_gradcheck_passes_on_mnist_cnn():
    torch.manual_seed(0)
    model = create_model("mnist_cnn", num_classes=3, in_chans=1, input_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = gradcheck(model, torch.randn(2, 1, 8, 8), samples=48)
    assert r.passed, [(t.name, t.rel_error) for t in r.tensors]
    names = [t.name for t in r.tensors]
    assert names == [n for n, _ in model.named_parameters()] + ["input"]
    assert r.max_rel_error < 1e-6
    assert r.kink_layers == ["network1.2 (ReLU)", "network1.3 (MaxPool2d)"]
    # the conv bias feeds BatchNorm, which cancels it: a zero gradient, noted as such
    assert [t.name for t in r.tensors if t.zero] == ["network1.0.bias"]
    # the user's module is untouched: still float32, same values
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k])
               for k, v in model.state_dict().items())


class _Square(torch.autograd.Function):
    """x**2 with a hand-written backward: right (2x) or wrong (x)."""

    @staticmethod
    def forward(ctx, x, wrong):
        ctx.save_for_backward(x)
        ctx.wrong = wrong
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x if ctx.wrong else 2 * x), None


class _SquareNet(nn.Module):
    def __init__(self, wrong: bool) -> None:
        super().__init__()
        self.wrong = wrong
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(_Square.apply(self.conv(x), self.wrong).flatten(1))


def test_gradcheck_fails_on_a_wrong_custom_backward():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 6, 6)
    assert gradcheck(_SquareNet(wrong=False), x).passed
    r = gradcheck(_SquareNet(wrong=True), x)
    assert not r.passed
    by_name = {t.name: t for t in r.tensors}
    # upstream of the bad backward the gradient is half: |g - 2g| / (|g| + |2g|) = 1/3
    for name in ("conv.weight", "conv.bias", "input"):
        assert not by_name[name].passed
        assert by_name[name].rel_error == pytest.approx(1 / 3, abs=1e-6)
        w = by_name[name].worst[0]
        assert w["numeric"] == pytest.approx(2 * w["analytic"], rel=1e-5)
    assert by_name["fc.weight"].passed and by_name["fc.bias"].passed  # downstream is fine


def test_gradcheck_leaves_out_entries_across_a_relu_kink():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    x = torch.tensor([[0.0, 1.0]])  # the first unit sits exactly on ReLU's kink
    r = gradcheck(net, x, samples=None)
    by_name = {t.name: t for t in r.tensors}
    # crossing it: bias 0, weight (0, 1) (it multiplies x = 1) and input (0, 0)
    assert [by_name[n].kinks for n in ("0.weight", "0.bias", "input")] == [1, 1, 1]
    assert r.kinks == 3 and r.passed
    assert r.kink_layers == ["1 (ReLU)"]


def test_gradcheck_names_a_layer_that_cannot_run_in_float64():
    class ToFloat32(nn.Module):
        def forward(self, x):
            return x.float()

    net = nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.Tanh(), ToFloat32()))
    with pytest.raises(ModelError, match=r"layer '1\.1' \(ToFloat32\) returns torch.float32"):
        gradcheck(net, torch.randn(2, 4))

    class Float32Matmul(nn.Module):
        def forward(self, x):
            return x @ torch.ones(3, 3)  # a float32 constant: fails in float64

    net = nn.Sequential(nn.Linear(4, 3), Float32Matmul())
    with pytest.raises(ModelError, match=r"layer '1' \(Float32Matmul\) fails"):
        gradcheck(net, torch.randn(2, 4))
    # a wrong input is not blamed on float64
    with pytest.raises(ModelError, match=r"fails on this input \(shape \(2, 5\)\) at layer "
                                         r"'0' \(Linear\)"):
        gradcheck(net, torch.randn(2, 5))


def test_gradcheck_cli(capsys):
    assert main(["gradcheck", "mnist_cnn", "--samples", "16"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "network2.weight" in out and "worst entries" in out
    assert "kinks" in out
