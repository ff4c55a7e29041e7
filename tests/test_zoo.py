"""The registry's zoo: every model builds, trains one step, has the published counts,
the right classifier path (`head`) and preprocessing; the lecture's TinyYOLOv2 face net."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convlab.errors import ModelError
from convlab.models import count_parameters, create_model, default_preprocess, list_models, model_spec
from convlab.models.backbone import set_module
from convlab.models.pretrained import torchvision_weights
from convlab.models.zoo import TinyYoloFace

TORCHVISION = [n for n in list_models("zoo")
               if not n.startswith("efficientnet_lite") and n != "tiny_yolo_face"]
# the issue's list of architectures: all must be registered
ISSUE_ZOO = ["alexnet", "vgg11", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn", "vgg19_bn", "googlenet",
             "inception_v3", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
             "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "squeezenet1_0",
             "squeezenet1_1", "densenet121", "efficientnet_b0", "efficientnet_lite0",
             "tiny_yolo_face"]


def _small_size(name: str) -> int:
    spec = model_spec(name)
    if spec.flexible_size or spec.family != "zoo":
        return spec.input_size
    return max(spec.min_input_size, 32)


def test_every_issue_model_is_registered():
    assert set(ISSUE_ZOO) <= set(list_models("zoo"))


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name, one_thread):
    """Every registered model: builds, forward + backward on a small batch, shape, finite."""
    torch.manual_seed(0)
    size = _small_size(name)
    spec = model_spec(name)
    model = create_model(name, num_classes=5, input_size=size)
    model.train()
    x = torch.randn(2, spec.channels, size, size)
    y = model(x)
    assert y.shape == (2, 5)
    assert torch.isfinite(y).all()
    y.float().logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list_models("zoo"))
def test_one_channel_build_and_head(name):
    """1-channel builds, and replacing the module at `head` by Identity gives (N, D)."""
    spec = model_spec(name)
    size = max(spec.min_input_size, 32)
    with torch.device("meta"):
        model = create_model(name, num_classes=7, in_chans=1).eval()
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first.in_channels == 1
        assert model(torch.empty(2, 1, size, size)).shape == (2, 7)
        head = model.get_submodule(spec.head)
        assert isinstance(head, (nn.Linear, nn.Conv2d))
        out_features = head.out_features if isinstance(head, nn.Linear) else head.out_channels
        assert out_features == 7  # the head is the layer that makes the class scores
        set_module(model, spec.head, nn.Identity())
        feats = model(torch.empty(2, 1, size, size))
    assert feats.dim() == 2 and feats.shape[0] == 2 and feats.shape[1] > 7


@pytest.mark.parametrize("name", TORCHVISION)
def test_published_parameter_counts(name):
    """Parameter counts equal torchvision's published num_params exactly (1000 classes)."""
    published = torchvision_weights(name).meta["num_params"]
    if name == "inception_v3":
        # torchvision's figure includes the auxiliary classifier its weights carry
        assert count_parameters(name, 1000) == 23_834_568
        with torch.device("meta"):
            m = create_model(name, 1000, aux_logits=True)
        assert sum(p.numel() for p in m.parameters()) == published == 27_161_264
    else:
        assert count_parameters(name, 1000) == published


def test_alexnet_and_googlenet_counts():
    assert count_parameters("alexnet", 1000) == 61_100_840
    assert count_parameters("googlenet", 1000) == 6_624_904  # no auxiliary classifiers
    assert count_parameters("efficientnet_lite0", 1000) == 4_652_008


@pytest.mark.parametrize("name", TORCHVISION)
def test_preprocessing_matches_torchvision_weights(name):
    t = torchvision_weights(name).transforms()
    pre, size = default_preprocess(name)
    assert size == t.crop_size[0] and pre.size == (size, size)
    assert pre.resize == "shorter_crop"
    assert pre.crop_fraction == pytest.approx(t.crop_size[0] / t.resize_size[0])
    assert pre.interpolation == t.interpolation.value
    assert pre.mean == pytest.approx(tuple(t.mean)) and pre.std == pytest.approx(tuple(t.std))


def test_lite0_preprocessing():
    pre, size = default_preprocess("efficientnet_lite0")
    assert size == 224 and pre.interpolation == "bicubic" and pre.crop_fraction == 0.875
    x = torch.tensor([[[[127, 255]]]], dtype=torch.uint8).expand(1, 3, 1, 2)
    # x = (pixel - 127) / 128
    y = pre.normalize(x.float() / 255)[0, :, 0]                # (3, 2)
    assert torch.allclose(y, torch.tensor([[0.0, 1.0]] * 3), atol=1e-6)
    assert model_spec("efficientnet_lite0").load_pretrained is not None


@pytest.mark.parametrize("name", [n for n in list_models("zoo") if model_spec(n).min_input_size > 1])
def test_min_input_size_is_the_smallest_that_works(name):
    from convlab.analysis import model_stats

    m = model_spec(name).min_input_size
    model_stats(name, (3, m, m))
    with pytest.raises(ModelError, match="too small"):
        model_stats(name, (3, m - 1, m - 1))


def test_tiny_yolo_face_matches_the_lecture_table():
    model = TinyYoloFace(num_classes=25).eval()
    x = torch.randn(1, 3, 224, 224)
    assert model.grid(x).shape == (1, 25, 7, 7)        # the 7x7x25 output grid
    assert model(x).shape == (1, 25)                    # averaged over space: a classifier
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == 12
    dw = [m for m in convs.values() if m.groups > 1]
    assert [m.in_channels for m in dw] == [16, 32, 64, 128, 256]
    assert all(m.groups == m.in_channels == m.out_channels and m.kernel_size == (3, 3) for m in dw)
    assert model.conv1[0].kernel_size == (3, 3) and model.conv1[0].groups == 1
    assert model.conv11[0].out_channels == 512 and model.conv12.kernel_size == (1, 1)
