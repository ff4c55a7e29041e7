"""The lecture's models, the fit loop, run directories, resume, NaN and Ctrl-C handling."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import convlab
from convlab import Callback, TrainConfig, fit, load_run
from convlab.checkpoint import META_FILE, MODEL_FILE, read_meta, save_run
from convlab.errors import CheckpointError, ModelError, TrainingError
from convlab.models import count_parameters, create_model, default_preprocess, model_spec
from convlab.training import TrainingInterrupted, evaluate

from conftest import make_imageset


def test_lecture_parameter_counts_worked_by_hand():
    assert count_parameters("mnist_linear") == 28 * 28 * 10 + 10 == 7_850
    # conv 5*5*1*32 + 32, BatchNorm 2*32, linear 32*14*14*10 + 10
    assert count_parameters("mnist_cnn") == (5 * 5 * 1 * 32 + 32) + 64 + (32 * 14 * 14 * 10 + 10) == 63_626
    assert count_parameters("mnist_mlp") == (784 * 20 + 20) + 40 + (20 * 10 + 10)
    # LeNet-5: C1 156, C3 2,416, C5 48,120, F6 10,164, output 850
    assert count_parameters("lenet5") == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706


@pytest.mark.parametrize("name", ["mnist_linear", "mnist_mlp", "mnist_cnn", "lenet5", "small_cnn"])
@pytest.mark.parametrize("chans,classes", [(1, 3), (3, 7)])
def test_lecture_models_any_classes_and_channels(name, chans, classes):
    pre, size = default_preprocess(name, chans, 28)
    model = create_model(name, classes, chans, input_size=size)
    x = pre(torch.randint(0, 255, (4, chans, 28, 28), dtype=torch.uint8))
    out = model(x)
    assert out.shape == (4, classes) and torch.isfinite(out).all()
    out.sum().backward()
    params = list(model.parameters())
    assert all(p.grad is not None and p.grad.shape == p.shape and torch.isfinite(p.grad).all()
               for p in params)
    assert params[0].grad.abs().sum() > 0  # the gradient reaches the first layer
    # by hand: d(sum of all scores)/d(bias_k) is the number of images for every class k, and
    # every class's weight row gets the same gradient (the features summed over the batch)
    head = model.get_submodule(model_spec(name).head)
    assert torch.equal(head.bias.grad, torch.full((classes,), 4.0))
    assert torch.allclose(head.weight.grad, head.weight.grad[:1].expand_as(head.weight.grad))
    # and the gradient is the derivative: in float64, a central difference along its
    # direction gives its norm (dropout masks held fixed by reseeding before each forward)
    m64, x64 = copy.deepcopy(model).double(), x.double()
    m64.zero_grad()
    torch.manual_seed(1)
    m64(x64).sum().backward()
    grads = [p.grad.clone() for p in m64.parameters()]
    norm = float(torch.cat([g.flatten() for g in grads]).norm())
    with torch.no_grad():
        sums = []
        for step in (1e-6, -1e-6):
            for p, g in zip(m64.parameters(), grads):
                p.add_(g, alpha=step / norm)
            torch.manual_seed(1)
            sums.append(float(m64(x64).sum()))
            for p, g in zip(m64.parameters(), grads):
                p.sub_(g, alpha=step / norm)
    assert (sums[0] - sums[1]) / 2e-6 == pytest.approx(norm, rel=1e-7)


def test_unknown_model_suggests_closest():
    with pytest.raises(ModelError, match=r"unknown model 'mnist_cnm' \(did you mean mnist_cnn\?\).*lenet5"):
        create_model("mnist_cnm")


def _setup(tmp_path, epochs=2, seed=0, **cfg):
    data = make_imageset(16, 3, seed=seed)
    train, val = data.split(0.25, seed=0)
    pre, size = default_preprocess("mnist_cnn", 1, 28)
    config = TrainConfig(epochs=epochs, batch_size=8, lr=0.01, optimizer="momentum", seed=seed, **cfg)
    meta = {"model": {"name": "mnist_cnn", "kwargs": {"num_classes": 3, "in_chans": 1, "input_size": 28}},
            "dataset": {"name": data.name}}
    return train, val, pre, config, meta


def test_fit_learns_and_writes_a_complete_run(tmp_path):
    train, val, pre, config, meta = _setup(tmp_path, epochs=3)
    model = create_model("mnist_cnn", 3, 1)
    result = fit(model, train, val, config=config, preprocess=pre, run_dir=tmp_path / "run",
                 meta=meta, verbose=False)
    assert [s.epoch for s in result.history] == [1, 2, 3]
    assert result.history[-1].val_acc == 1.0
    for f in (MODEL_FILE, META_FILE, "metrics.jsonl", "train_state.safetensors"):
        assert (tmp_path / "run" / f).exists()
    assert not (tmp_path / "run" / ".staging").exists()
    m = read_meta(tmp_path / "run")
    assert m["classes"] == ["class0", "class1", "class2"] and m["state"]["complete"]
    assert m["preprocess"]["size"] == [28, 28] and m["train"]["lr"] == 0.01
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    run = load_run(tmp_path / "run")
    r = evaluate(run.model, val, run.preprocess)
    assert r.top1 == 1.0 and r.n == len(val) and int(r.confusion.sum()) == len(val)


def test_resume_equals_uninterrupted(tmp_path):
    train, val, pre, config, meta = _setup(tmp_path, epochs=3)
    torch.manual_seed(0)
    straight = create_model("mnist_cnn", 3, 1)
    fit(straight, train, val, config=config, preprocess=pre, run_dir=tmp_path / "a", meta=meta, verbose=False)

    class StopAt(Callback):
        def on_batch_end(self, state):
            if state.epoch == 2 and state.batch == 2:
                raise KeyboardInterrupt

    torch.manual_seed(0)
    first = create_model("mnist_cnn", 3, 1)
    with pytest.raises(TrainingInterrupted, match="holds epoch 1 - continue with --resume"):
        fit(first, train, val, config=config, preprocess=pre, run_dir=tmp_path / "b", meta=meta,
            callbacks=[StopAt()], verbose=False)
    assert read_meta(tmp_path / "b")["state"]["epoch"] == 1
    resumed = create_model("mnist_cnn", 3, 1)
    result = fit(resumed, train, val, config=config, preprocess=pre, run_dir=tmp_path / "b",
                 meta=meta, resume=True, verbose=False)
    assert [s.epoch for s in result.history] == [1, 2, 3]
    a, b = load_run(tmp_path / "a").model.state_dict(), load_run(tmp_path / "b").model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_loss_stops_and_keeps_last_good_epoch(tmp_path):
    train, val, pre, config, meta = _setup(tmp_path, epochs=3)

    class Poison(Callback):
        def on_epoch_start(self, state):
            if state.epoch == 2:
                with torch.no_grad():
                    state.model.network2.weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, batch 1; try a lower learning rate"):
        fit(create_model("mnist_cnn", 3, 1), train, val, config=config, preprocess=pre,
            run_dir=tmp_path / "run", meta=meta, callbacks=[Poison()], verbose=False)
    run = load_run(tmp_path / "run")
    assert run.meta["state"]["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_interrupted_save_is_never_read_half_written(tmp_path):
    model = create_model("mnist_linear", 3, 1)
    save_run(tmp_path, model, {"model": {"name": "mnist_linear", "kwargs": {"num_classes": 3, "in_chans": 1}},
                               "classes": ["a", "b", "c"], "preprocess": {}, "state": {"epoch": 1}})
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / META_FILE).write_text("{ half")  # a crash before COMPLETE
    assert read_meta(tmp_path)["state"]["epoch"] == 1 and not staging.exists()
    newer = {**read_meta(tmp_path), "state": {"epoch": 2}}
    staging.mkdir()
    (staging / META_FILE).write_text(json.dumps(newer))
    (staging / "COMPLETE").touch()  # a crash after COMPLETE: rolled forward
    assert read_meta(tmp_path)["state"]["epoch"] == 2 and not staging.exists()


def test_train_api_and_resume_checks(tmp_path):
    data = make_imageset(10, 2)
    cfg = TrainConfig(epochs=1, batch_size=8, val_split=0.2)
    res = convlab.train(data, "mnist_linear", cfg, out=tmp_path / "r", verbose=False)
    assert res.test is None and len(res.history) == 1
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        convlab.train(data, "mnist_linear", cfg, out=tmp_path / "r", verbose=False)
    with pytest.raises(CheckpointError, match="trained with model 'mnist_linear', not 'mnist_mlp'"):
        convlab.train(data, "mnist_mlp", cfg, out=tmp_path / "r", resume=True, verbose=False)
    single = make_imageset(10, 1)
    with pytest.raises(convlab.DatasetError, match="at least 2 classes"):
        convlab.train(single, "mnist_linear", cfg, verbose=False)


@pytest.mark.parametrize("loss,opt", [("mse", "sgd"), ("hinge", "nesterov"), ("cross-entropy", "adamw")])
def test_losses_and_optimizers_train(loss, opt, tmp_path):
    data = make_imageset(12, 3)
    cfg = TrainConfig(epochs=4, batch_size=6, lr=0.05 if opt != "adamw" else 0.01, loss=loss,
                      optimizer=opt, val_split=0)
    res = convlab.train(data, "mnist_cnn", cfg, verbose=False)
    assert res.history[-1].acc > res.history[0].acc or res.history[-1].acc == 1.0
    assert res.history[-1].loss < res.history[0].loss


def test_config_refuses_bad_values():
    with pytest.raises(convlab.ConfigError, match="unknown optimizer 'adagrad'; valid: sgd, momentum"):
        TrainConfig(optimizer="adagrad")
    with pytest.raises(convlab.ConfigError, match="validation split must be in"):
        TrainConfig(val_split=1.5)


def test_predictor_reads_preprocessing_from_the_run(tmp_path):
    from PIL import Image

    data = make_imageset(12, 3)
    convlab.train(data, "lenet5", TrainConfig(epochs=6, batch_size=6, lr=0.05, optimizer="momentum",
                                              val_split=0), out=tmp_path / "run", verbose=False)
    # a big RGBA file of class 1: the run pads/resizes and converts it itself
    img = data.images[20, 0].numpy()
    Image.fromarray(img).resize((56, 56)).convert("RGBA").save(tmp_path / "x.png")
    pred = convlab.Predictor(tmp_path / "run").predict_files([tmp_path / "x.png"], top=2)[0]
    assert pred.labels[0] == "class1" and len(pred.probs) == 2 and 0 <= pred.probs[1] <= pred.probs[0] <= 1


def _float64_twins():
    """A batch, and two float64 mnist_cnn with the same weights: `plain` with the
    gradients of the plain NCHW forward and backward, `fast` untouched."""
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    plain = create_model("mnist_cnn", 10, 1).double()
    fast = create_model("mnist_cnn", 10, 1).double()
    fast.load_state_dict(plain.state_dict())
    nn.functional.cross_entropy(plain(x.double()), y).backward()
    return x, y, plain, fast


def test_channels_last_twin_keeps_gradients_and_hooks_nothing_on_the_model():
    """The pooling-gradient layout rewrite changes speed only: the same gradients as plain
    NCHW, and no hook on the user's model, during training or after."""
    from convlab.training.speedups import training_twin

    x, y, plain, fast = _float64_twins()
    with training_twin(fast, fuse=False) as (twin, on):
        assert on and fast.network1[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert "channels_last gradient at network1.3" in twin.rewritten  # the max pool's
        assert not any(m._forward_hooks for m in fast.modules())
        nn.functional.cross_entropy(twin(x.double().contiguous(memory_format=torch.channels_last)), y).backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert not any(m._forward_hooks for m in fast.modules())
    linear = create_model("mnist_linear", 10, 1)
    with training_twin(linear) as (twin, on):
        assert not on and twin is linear  # no convolutions: nothing to gain


def test_training_twin_hands_relu_after_pool_a_channels_last_gradient():
    """With the ReLU moved after the max pool (in the twin), the gradient from the
    flatten is turned channels_last at the ReLU (else ReLU backward mixes layouts, 10x
    slower); gradients stay those of the plain model, whose layers stay in their order."""
    from convlab.training.speedups import training_twin

    x, y, plain, fast = _float64_twins()
    from torch.utils._python_dispatch import TorchDispatchMode

    class ReluBackwardArgs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.threshold_backward.default:
                self.seen.append(args[:2])  # (gradient, ReLU output)
            return func(*args, **(kwargs or {}))

    with training_twin(fast, fuse=False) as (twin, on):  # the layers, not the fused kernel
        assert on and "ReLU after MaxPool2d at network1.2" in twin.rewritten
        assert isinstance(fast.network1[2], nn.ReLU) and isinstance(fast.network1[3], nn.MaxPool2d)
        loss = nn.functional.cross_entropy(twin(x.double().contiguous(memory_format=torch.channels_last)), y)
        with ReluBackwardArgs() as mode:
            loss.backward()
    assert len(mode.seen) == 1
    assert mode.seen[0][1].shape == (8, 32, 14, 14)  # the ReLU ran on the pooled values
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in mode.seen[0])
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    assert not any(m._forward_hooks for m in fast.modules())
    assert isinstance(fast.network1[2], nn.ReLU)


def test_precision_choice_and_bf16_training(tmp_path):
    from convlab._runtime import cpu_has_bf16
    from convlab.training.speedups import uses_bf16

    cpu = torch.device("cpu")
    assert not uses_bf16("auto", cpu) and not uses_bf16("fp32", cpu)
    with pytest.raises(convlab.errors.ConfigError, match="unknown precision 'fp16'; valid: auto, fp32, bf16"):
        TrainConfig(precision="fp16")
    if not cpu_has_bf16():
        with pytest.raises(convlab.errors.ConfigError, match="native bfloat16"):
            uses_bf16("bf16", cpu)
        pytest.skip("this CPU has no native bfloat16")
    assert uses_bf16("bf16", cpu)
    train, val, pre, config, meta = _setup(tmp_path, epochs=3, precision="bf16")
    model = create_model("mnist_cnn", 3, 1)
    result = fit(model, train, val, config=config, preprocess=pre, verbose=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert result.history[-1].acc > result.history[0].acc and result.history[-1].val_acc == 1.0


def test_channels_last_twin_allows_in_place_changes_after_pooling():
    """A module backward hook would refuse `y += 1` on the pool's output; the tensor hook
    the twin puts there does not, and the gradients are the module's own."""
    import copy

    from convlab.training.speedups import training_twin

    class PoolThenAdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.fc = nn.Conv2d(3, 8, 3), nn.MaxPool2d(2), nn.Linear(8 * 15 * 15, 2)

        def forward(self, x):
            y = self.pool(self.conv(x))
            y += 1.0
            return self.fc(torch.relu(y).flatten(1))

    model = PoolThenAdd()
    plain = copy.deepcopy(model)
    x = torch.rand(2, 3, 32, 32)
    plain(x).sum().backward()
    with training_twin(model) as (twin, on):
        assert on and twin.rewritten == ["channels_last gradient at pool"]
        twin(x.contiguous(memory_format=torch.channels_last)).sum().backward()
    assert model.conv.weight.grad is not None and torch.isfinite(model.conv.weight.grad).all()
    for (name, a), b in zip(plain.named_parameters(), model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


@pytest.mark.parametrize("name,chans,size", [("mnist_cnn", 1, 28), ("alexnet", 3, 63)])
def test_relu_after_max_pool_is_exact_and_leaves_the_model_alone(name, chans, size):
    """Swapping ReLU -> MaxPool into MaxPool -> ReLU (in the twin) changes nothing but
    speed: the same outputs and gradients bit for bit (in-place ReLUs included), and the
    model keeps its order throughout."""
    from convlab.training.speedups import training_twin

    torch.manual_seed(0)
    a = create_model(name, 4, chans)
    b = create_model(name, 4, chans)
    b.load_state_dict(a.state_dict())
    before = repr(b)
    x = torch.randn(3, chans, size, size)
    x[0, :, :4, :4] = 0.0  # windows of ties at zero
    torch.manual_seed(1)  # the same dropout masks
    out_a = a(x)
    out_a.square().sum().backward()
    with training_twin(b, channels_last=False) as (twin, _):
        swapped = sum(r.startswith("ReLU after MaxPool2d") for r in twin.rewritten)
        assert swapped == (1 if name == "mnist_cnn" else 3) and repr(b) == before
        torch.manual_seed(1)
        out_b = twin(x)
        out_b.square().sum().backward()
    assert torch.equal(out_a, out_b)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad), n
    assert repr(b) == before


def test_evaluate_without_a_loss_uses_the_tasks_default_loss():
    import torch.nn.functional as F

    from convlab.tasks import CLASSIFICATION

    data = make_imageset(n_per_class=5, classes=3, size=12)
    torch.manual_seed(0)
    pre, size = default_preprocess("mnist_linear", 1, 12)
    model = create_model("mnist_linear", 3, 1, input_size=size)
    default = evaluate(model, data, pre, batch_size=4)
    with torch.no_grad():
        logits = model(pre(data.images))
    assert default.loss == pytest.approx(float(F.cross_entropy(logits, data.labels)), rel=1e-5)
    smoothed = CLASSIFICATION.loss(TrainConfig(label_smoothing=0.3))
    assert evaluate(model, data, pre, loss_fn=smoothed).loss == pytest.approx(
        float(smoothed(logits, data.labels)), rel=1e-5)


def test_fit_refuses_images_without_their_preprocess_before_anything_starts(tmp_path):
    from convlab.data import FeatureSet
    from convlab.errors import ConfigError

    data = make_imageset(n_per_class=4, classes=2, size=12)
    pre, size = default_preprocess("mnist_linear", 1, 12)
    model = create_model("mnist_linear", 2, 1, input_size=size)
    config = TrainConfig(epochs=1, batch_size=4, val_split=0.0)
    with pytest.raises(ConfigError, match="ImageSet, which needs its Preprocess"):
        fit(model, data, config=config, preprocess=None, run_dir=tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists()  # refused before any epoch or run folder
    features = FeatureSet(torch.randn(8, 5), data.labels, data.classes)
    with pytest.raises(ConfigError, match="validation data is an ImageSet"):
        fit(nn.Linear(5, 2), features, data, config=config, preprocess=None, verbose=False)
    with pytest.raises(ConfigError, match="FeatureSet .embeddings., which takes no Preprocess"):
        fit(nn.Linear(5, 2), features, config=config, preprocess=pre, verbose=False)
