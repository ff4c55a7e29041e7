"""`convlab show`: kernels, templates and feature maps as readable PNGs, from a run or a model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convlab.analysis.learned import conv_kernels, diverging, feature_maps, linear_templates
from convlab.cli import main
from convlab.config import TrainConfig
from convlab.models import create_model, model_spec
from convlab.training import train
from conftest import make_imageset


def _check_png(path, min_side=200):
    """Exists, a real size, and not blank: many distinct colours, visible contrast."""
    assert path.is_file()
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = img.shape
    assert h >= min_side and w >= min_side
    assert img.std() > 20
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    return img


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cnn"
    data = make_imageset(n_per_class=8, classes=3, size=28)
    train(data, "mnist_cnn", TrainConfig(epochs=1, batch_size=8), out=out, verbose=False,
          log=lambda s: None)
    return out


def test_kernels_of_a_trained_run(cnn_run, capsys):
    assert main(["show", str(cnn_run)]) == 0
    path = cnn_run / "kernels.png"
    assert capsys.readouterr().out.strip() == str(path)
    _check_png(path)


def test_inspect_a_run_directory(cnn_run, capsys):
    import json

    from convlab.checkpoint import load_run

    assert main(["inspect", str(cnn_run), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    run = load_run(cnn_run)
    assert data["classes"] == 3 and data["input"] == [1, 28, 28]
    assert data["totals"]["params"] == sum(p.numel() for p in run.model.parameters()) == \
        5 * 5 * 32 + 32 + 2 * 32 + 32 * 14 * 14 * 3 + 3


def test_kernels_tensor_is_the_first_conv():
    model = create_model("mnist_cnn")
    name, w, note = conv_kernels(model)
    assert name == "network1.0" and w.shape == (32, 1, 5, 5) and note == ""
    assert torch.equal(w, model.network1[0].weight.detach())
    model = create_model("small_cnn")
    name, w, note = conv_kernels(model, "features.3")        # a deeper layer: 32 inputs
    assert w.shape == (64, 1, 3, 3) and "mean over 32" in note


def test_templates_of_linear_models(tmp_path):
    model = create_model("mnist_linear")
    name, t = linear_templates(model, (1, 28, 28))
    assert name == "network" and t.shape == (10, 1, 28, 28)
    assert torch.equal(t[3].flatten(), model.network.weight[3].detach())   # unit 3's weights
    d = diverging(torch.tensor([[-2.0, 0.0, 1.0]]))
    assert d.tolist() == [[0.0, 0.5, 0.75]]                                 # zero is the midpoint
    assert main(["show", "mnist_mlp", "templates", "--out", str(tmp_path)]) == 0
    _check_png(tmp_path / "templates.png")
    assert main(["show", "mnist_linear", "templates", "--out", str(tmp_path / "lin")]) == 0
    _check_png(tmp_path / "lin" / "templates.png")


def test_feature_maps_for_an_image(cnn_run, tmp_path, capsys):
    img = tmp_path / "in.png"
    arr = np.zeros((40, 40), np.uint8)
    arr[10:30, 15:25] = 255
    Image.fromarray(arr, "L").save(img)
    assert main(["show", str(cnn_run), "features", "--image", str(img), "--layer", "network1.0",
                 "--layer", "network1.3", "--out", str(tmp_path / "maps")]) == 0
    out = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in out] == ["features-network1.0.png", "features-network1.3.png"]
    for p in out:
        _check_png(tmp_path / "maps" / p.rsplit("/", 1)[1])
    model = create_model("mnist_cnn").eval()
    maps = feature_maps(model, torch.randn(1, 1, 28, 28), ["network1.0", "network1.3", "network2"])
    assert maps["network1.0"].shape == (32, 28, 28) and maps["network1.3"].shape == (32, 14, 14)
    assert maps["network2"].shape == (1, 4, 4)   # 10 class scores drawn as a padded 4x4 square


def test_pretrained_lite0_stem_kernels_in_colour(tmp_path):
    if model_spec("efficientnet_lite0").load_pretrained is None:
        pytest.fail("efficientnet_lite0 lost its bundled weights loader")
    assert main(["show", "efficientnet_lite0", "--pretrained", "--out", str(tmp_path)]) == 0
    img = _check_png(tmp_path / "kernels.png")
    assert np.abs(img[..., 0].astype(int) - img[..., 1]).max() > 100   # colour, not grey


def test_errors(tmp_path, capsys):
    assert main(["show", "mnist_cnn", "templates", "--out", str(tmp_path)]) == 2
    assert "templates need" in capsys.readouterr().err
    assert main(["show", "mnist_cnn", "features", "--layer", "network1.9", "--out",
                 str(tmp_path)]) == 2
    assert "unknown layer 'network1.9'" in capsys.readouterr().err
    assert main(["show", "mnist_linear", "kernels", "--out", str(tmp_path)]) == 2
    assert "no convolution layers" in capsys.readouterr().err
    assert main(["show", "resnet81"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["show", "mnist_cnn", "--pretrained"]) == 2
    assert "no bundled pretrained weights" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.png"))  # a refused command leaves no figure behind
    # the refusals are about the options: the same model without them draws its kernels
    assert main(["show", "mnist_cnn", "--out", str(tmp_path)]) == 0
    _check_png(tmp_path / "kernels.png")
