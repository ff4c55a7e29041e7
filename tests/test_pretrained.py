"""Bundled EfficientNet-Lite0 weights, weight files, and ImageNet classification (offline)."""
from __future__ import annotations

import pickle

import pytest
import torch

from convlab import ModelError, create_model
from convlab.models import pretrained_model
from convlab.models.pretrained import bundled_state, imagenet_classes, load_bundled, load_weights_file
from convlab.predict import classify_images


def _photo(name: str) -> torch.Tensor:
    import skimage.data

    return torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).contiguous()


def test_bundled_weights_map_one_to_one_onto_timm():
    state = bundled_state("efficientnet_lite0")
    model = create_model("efficientnet_lite0", num_classes=1000)
    target = model.state_dict()
    assert len(state) == 296 and set(state) == set(target)
    assert all(state[k].shape == target[k].shape for k in target)
    load_bundled(model, "efficientnet_lite0")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_classify_coffee_is_espresso_and_chelsea_a_cat():
    (coffee, cat) = classify_images([_photo("coffee"), _photo("chelsea")], top=5)
    assert coffee[0][0] == "espresso" and coffee[0][1] > 0.8
    assert cat[0][0] in {"tiger cat", "Egyptian cat", "tabby"}
    assert sum(p for _, p in cat[:3]) > 0.8  # the top three are the three cat classes
    assert len(imagenet_classes()) == 1000


def test_greyscale_stem_and_new_classifier_keep_the_backbone():
    state = bundled_state("efficientnet_lite0")
    model = pretrained_model("efficientnet_lite0", num_classes=7, in_chans=1)
    assert torch.allclose(model.conv_stem.weight, state["conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(model.blocks[3][0].conv_pw.weight, state["blocks.3.0.conv_pw.weight"])
    assert model.classifier.weight.shape == (7, 1280)
    # a grey image gives the same features in the 1-channel model as in colour in the RGB one
    rgb = pretrained_model("efficientnet_lite0").eval()
    grey = model.eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a = rgb.forward_head(rgb.forward_features(x.expand(-1, 3, -1, -1)), pre_logits=True)
        b = grey.forward_head(grey.forward_features(x), pre_logits=True)
    assert torch.allclose(a, b, atol=1e-4)


def test_weights_file_round_trip_and_first_mismatch(tmp_path):
    src = create_model("mnist_cnn", num_classes=10)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth")
    dst = load_weights_file(create_model("mnist_cnn", num_classes=10), tmp_path / "w.pth", head="network2")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    # another number of classes keeps a fresh classifier; another kernel count names the tensor
    load_weights_file(create_model("mnist_cnn", num_classes=4), tmp_path / "w.pth", head="network2")
    with pytest.raises(ModelError, match=r"'network1\.0\.weight' is \(32, 1, 5, 5\) in the file but \(8, 1, 5, 5\)"):
        load_weights_file(create_model("mnist_cnn", num_classes=10, nkernels=8), tmp_path / "w.pth")


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv.weight": Evil()}))
    with pytest.raises(ModelError, match="not a readable state-dict"):
        load_weights_file(create_model("mnist_cnn"), path)


def test_published_weights_by_name_through_torchvision_loader(tmp_path, monkeypatch):
    # torchvision's real loader reads TORCH_HOME/hub/checkpoints before downloading
    from torchvision.models import get_model_weights

    saved = create_model("squeezenet1_1", num_classes=1000)
    url = get_model_weights("squeezenet1_1").IMAGENET1K_V1.url
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(saved.state_dict(), ckpt / url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelError, match="--weights FILE.*or run online"):
        pretrained_model("squeezenet1_1")  # CONVLAB_OFFLINE is set by conftest
    monkeypatch.delenv("CONVLAB_OFFLINE")
    loaded = pretrained_model("squeezenet1_1")
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))
