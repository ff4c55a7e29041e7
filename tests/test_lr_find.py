"""The learning-rate range test."""
from __future__ import annotations

import pytest
import torch

from convlab import TrainConfig, TrainingError, load_dataset, lr_find
from convlab.cli import main
from convlab.figures.plots import plot_lr_find
from convlab.training.run import model_for_data


# tiny tensors: one thread is many times faster than two on a shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train")  # 1,797 real 8x8 handwritten digits (scikit-learn)


def test_lr_find_suggests_a_rate_inside_the_range_on_real_digits(digits, tmp_path):
    torch.manual_seed(0)
    model, pre, _ = model_for_data("mnist_cnn", digits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(optimizer="sgd", batch_size=64)
    r = lr_find(model, digits, pre, config=cfg, start_lr=1e-5, end_lr=100.0, steps=80,
                verbose=False)
    assert 1e-5 < r.suggestion < 100.0
    assert r.lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(r.lrs, r.lrs[1:]))
    # plain SGD blows up well before lr 100 on this model: the test stops there
    assert r.diverged_lr is not None and len(r.lrs) < 80
    assert r.suggestion < r.min_loss_lr < r.diverged_lr
    # the suggestion is a point where the smoothed loss is already falling below the start
    i = r.lrs.index(r.suggestion)
    assert r.smoothed[i + 1] < r.smoothed[i] < r.smoothed[0]
    assert "steepest descent" in r.reason and "diverges" in r.reason
    # the weights are put back
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    png = plot_lr_find(r, tmp_path / "lr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_lr_find_says_the_start_lr_is_too_high_when_it_diverges_at_once(digits):
    torch.manual_seed(0)
    model, pre, _ = model_for_data("mnist_linear", digits)
    with pytest.raises(TrainingError, match=r"diverged at once.*start learning rate 50 is too "
                                            r"high.*--start-lr 0\.05"):
        lr_find(model, digits, pre, config=TrainConfig(optimizer="sgd"), start_lr=50.0,
                end_lr=1e4, steps=30, verbose=False)


def test_lr_find_says_when_the_range_ends_too_low(digits):
    torch.manual_seed(0)
    model, pre, _ = model_for_data("mnist_linear", digits)
    with pytest.raises(TrainingError, match=r"hardly fell.*raise --end-lr"):
        lr_find(model, digits, pre, config=TrainConfig(optimizer="sgd"), start_lr=1e-9,
                end_lr=1e-7, steps=20, verbose=False)


def test_lr_find_refuses_an_empty_range(digits):
    from convlab import ConfigError
    model, pre, _ = model_for_data("mnist_linear", digits)
    with pytest.raises(ConfigError, match="start lr < end lr"):
        lr_find(model, digits, pre, start_lr=1.0, end_lr=0.1, verbose=False)


def test_lr_find_cli(tmp_path, capsys):
    out = tmp_path / "lr.png"
    assert main(["lr-find", "digits", "--model", "mnist_linear", "--steps", "40",
                 "--optimizer", "sgd", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "suggested learning rate:" in text and "why: steepest descent" in text
    assert out.exists()
    assert main(["lr-find", "digits", "--model", "mnist_linear", "--steps", "20",
                 "--start-lr", "100", "--end-lr", "1000", "--optimizer", "sgd",
                 "--out", str(out)]) == 3  # TrainingError
    assert "start learning rate 100 is too high" in capsys.readouterr().err


def test_lr_find_runs_in_the_precision_it_is_given(digits):
    """The rate is found for the precision the run will train in (--precision bf16)."""
    from convlab._runtime import cpu_has_bf16
    from convlab.errors import ConfigError

    torch.manual_seed(0)
    model, pre, _ = model_for_data("mnist_cnn", digits)
    seen = []
    model.network1[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    cfg = TrainConfig(optimizer="sgd", batch_size=64, precision="bf16")
    if not cpu_has_bf16():
        with pytest.raises(ConfigError, match="native bfloat16"):
            lr_find(model, digits, pre, config=cfg, start_lr=1e-4, end_lr=1.0, steps=10, verbose=False)
        return
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        seen.clear()
        with pytest.raises(TrainingError, match="hardly fell"):  # 10 small steps: only the dtype matters
            lr_find(model, digits, pre, config=cfg.replace(precision=precision), start_lr=1e-6,
                    end_lr=1e-5, steps=10, verbose=False)
        assert seen and set(seen) == {dtype}
