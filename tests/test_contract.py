"""The backbone contract, held for every registered model that names a head
(`ModelSpec.head`): pre-logit features (N, D) through `forward_features` and
`FeatureExtractor`, D the width the head reads, and a head that resets to any number of
classes. Shapes are checked on the meta device (no memory, no arithmetic), so the whole
registry takes seconds; values are checked on a few small models built for real."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convlab.errors import ModelError
from convlab.models import create_model, list_models, model_spec
from convlab.models.backbone import FeatureExtractor, forward_features, get_module, reset_classifier


def _head_width(layer: nn.Module) -> int:
    """D as the head layer itself states it."""
    if isinstance(layer, nn.Linear):
        return layer.in_features
    assert isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1), type(layer).__name__
    return layer.in_channels


def _small_size(name: str) -> int:
    spec = model_spec(name)
    return spec.input_size if spec.flexible_size else max(spec.min_input_size, 32)


@pytest.mark.parametrize("name", list_models())
def test_backbone_contract(name):
    spec = model_spec(name)
    if not spec.head:
        pytest.skip(f"{name} names no head: not a backbone")
    size = _small_size(name)
    with torch.device("meta"):
        x = torch.empty(2, spec.channels, size, size)
        model = create_model(name, num_classes=7, input_size=size).eval()
        head = get_module(model, spec.head)
        d = _head_width(head)
        assert model(x).shape == (2, 7)

        feats = forward_features(model, spec.head, x)
        assert feats.shape == (2, d)
        assert get_module(model, spec.head) is head and model(x).shape == (2, 7)  # left alone

        assert reset_classifier(model, spec.head, 3) is model
        new_head = get_module(model, spec.head)
        assert type(new_head) is type(head) and new_head.weight.device.type == "meta"
        assert model(x).shape == (2, 3)
        assert forward_features(model, spec.head, x).shape == (2, d)  # same features, new head

        extractor = FeatureExtractor(model, spec.head).eval()
        assert extractor(x).shape == (2, d)


# the lecture models, the recipe's residual net, and one zoo model of each head kind:
# Linear after global pooling (resnet18), 1x1 Conv2d before pooling (squeezenet1_1,
# tiny_yolo_face)
REAL = [*list_models("lecture"), *list_models("recipe"), "resnet18", "squeezenet1_1",
        "tiny_yolo_face"]


@pytest.mark.parametrize("name", REAL)
def test_features_are_what_the_head_reads(name, one_thread):
    """On real numbers: forward_features and FeatureExtractor agree, and the head applied
    to the features gives the model's class scores. For TinyYOLOv2's 1x1-conv head too:
    averaging over space commutes with a 1x1 conv. Not for SqueezeNet, whose head is
    followed by a ReLU before the average."""
    torch.manual_seed(0)
    spec = model_spec(name)
    size = _small_size(name)
    model = create_model(name, num_classes=5, input_size=size).eval()
    x = torch.randn(3, spec.channels, size, size)
    with torch.no_grad():
        logits = model(x)
        feats = forward_features(model, spec.head, x)
        head = get_module(model, spec.head)
        if isinstance(head, nn.Linear):
            assert torch.allclose(head(feats), logits, atol=1e-5)
        elif name == "tiny_yolo_face":
            assert torch.allclose(head(feats[:, :, None, None]).flatten(1), logits, atol=1e-5)

        reset_classifier(model, spec.head, 3)
        assert model(x).shape == (3, 3)
        assert torch.equal(forward_features(model, spec.head, x), feats)  # the body untouched
        assert torch.allclose(FeatureExtractor(model, spec.head).eval()(x), feats, atol=1e-6)


def test_reset_head_keeps_dtype_and_refuses_other_layers():
    model = create_model("mnist_cnn", 10).double()
    reset_classifier(model, "network2", 4)
    assert model.network2.weight.dtype == torch.float64 and model.network2.out_features == 4
    assert model(torch.randn(2, 1, 28, 28, dtype=torch.float64)).shape == (2, 4)
    with pytest.raises(ModelError, match=r"'network1.0' is Conv2d, not a Linear or 1x1 Conv2d"):
        reset_classifier(model, "network1.0", 4)   # a 5x5 conv is no classifier
