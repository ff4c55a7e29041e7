"""The offline pretrained backbones (EfficientNet-Lite0/1/2, MobileNetV2): their files and
checksums, their key layouts against timm and torchvision, their preprocessing against
the weights' own, classify / embed / transfer / show with each, and `convlab backbones`.
Everything offline (conftest sets CONVLAB_OFFLINE)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_folder
from convlab.cli import main
from convlab.errors import ModelError
from convlab.models import (create_model, default_preprocess, list_pretrained, model_spec,
                            pretrained_model)
from convlab.models.pretrained import (BUNDLED, bundled_path, bundled_state, load_bundled,
                                       read_verified)

OFFLINE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"]


def _photo(name: str) -> torch.Tensor:
    import skimage.data

    return torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def states() -> dict[str, dict[str, torch.Tensor]]:
    """Each backbone's bundled tensors, read (and checksum-verified) once for the module."""
    return {name: bundled_state(name) for name in OFFLINE}


def test_the_offline_backbones_are_registered_with_their_weights():
    assert list_pretrained() == OFFLINE == sorted(BUNDLED)
    for name in OFFLINE:
        spec = model_spec(name)
        assert spec.bundled is BUNDLED[name] and spec.load_pretrained is not None
        assert spec.num_classes == 1000 and len(spec.bundled.categories()) == 1000
        path = bundled_path(spec.bundled)
        # torch hub's naming: the file name carries the start of its SHA-256
        assert spec.bundled.sha256.startswith(path.stem.rsplit("-", 1)[1]), path.name
    assert BUNDLED["mobilenet_v2"].sha256.startswith("b0353104")
    assert "--no-deps" in BUNDLED["mobilenet_v2"].install


@pytest.mark.parametrize("name,timm_name,depths,tensors", [
    ("efficientnet_lite0", "tf_efficientnet_lite0", (1, 2, 2, 3, 3, 4, 1), 296),
    ("efficientnet_lite1", "tf_efficientnet_lite1", (1, 3, 3, 4, 4, 5, 1), 386),
    ("efficientnet_lite2", "tf_efficientnet_lite2", (1, 3, 3, 4, 4, 5, 1), 386)])
def test_lite_files_map_one_to_one_onto_timm(states, name, timm_name, depths, tensors):
    """Every tensor of the lukemelas file lands on one of timm's, with its shape, and the
    stage depths used to place the flat block index are timm's own."""
    import timm

    with torch.device("meta"):
        reference = timm.create_model(timm_name, pretrained=False)
    assert tuple(len(stage) for stage in reference.blocks) == depths == BUNDLED[name].stage_depths
    target = reference.state_dict()
    state = states[name]
    assert set(state) == set(target) and len(state) == tensors
    assert all(state[k].shape == target[k].shape for k in target)


def test_mobilenet_v2_is_torchvisions_file_loaded_strictly(states):
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2()
    model.load_state_dict(states["mobilenet_v2"], strict=True)   # torchvision's own names
    ours = pretrained_model("mobilenet_v2")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 ours.state_dict().values()))


def test_preprocessing_is_the_weights_own():
    """MobileNetV2: its IMAGENET1K_V1 weights' transforms (resize 256, crop 224, bilinear,
    ImageNet mean/std); the Lite models: timm's pretrained_cfg (size, crop, bicubic) with
    x = (pixel - 127) / 128."""
    import timm
    from torchvision.models import MobileNet_V2_Weights

    t = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    pre, size = default_preprocess("mobilenet_v2")
    assert (size, pre.crop_fraction) == (t.crop_size[0], t.crop_size[0] / t.resize_size[0]) == (224, 0.875)
    assert pre.interpolation == t.interpolation.value and pre.resize == "shorter_crop"
    assert pre.mean == pytest.approx(tuple(t.mean)) and pre.std == pytest.approx(tuple(t.std))
    for n in (0, 1, 2):
        cfg = timm.get_pretrained_cfg(f"tf_efficientnet_lite{n}")
        pre, size = default_preprocess(f"efficientnet_lite{n}")
        assert (size, size) == cfg.input_size[1:] == pre.size
        assert pre.crop_fraction == pytest.approx(cfg.crop_pct) and pre.interpolation == "bicubic"
        assert pre.mean == pytest.approx((127 / 255,) * 3) and pre.std == pytest.approx((128 / 255,) * 3)
    assert [model_spec(f"efficientnet_lite{n}").input_size for n in (0, 1, 2)] == [224, 240, 260]


def test_checksum_mismatch_is_a_clear_error_and_loads_nothing(tmp_path):
    record = BUNDLED["mobilenet_v2"]
    model = create_model("mobilenet_v2", num_classes=1000)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrong = dataclasses.replace(record, sha256="0" * 64)
    with pytest.raises(ModelError, match=r"SHA-256 b0353104\S*\.\.\. differs from the pinned "
                                         r"0000000000000000\.\.\..*nothing was loaded"):
        load_bundled(model, wrong, head="classifier.1")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # a damaged copy of the real file (one byte flipped) is refused before unpickling
    data = bytearray(bundled_path(record).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "damaged.pth").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="damaged or not the published weights"):
        read_verified(tmp_path / "damaged.pth", record.sha256)


def test_classify_offline_mobilenet_v2_espresso_and_lite1_lite2(tmp_path, capsys):
    """The lecture's Cozmo demo as one command: `convlab classify --model mobilenet_v2
    coffee.jpg` gives espresso first, offline; Lite1 and Lite2 classify too."""
    from convlab.predict import classify_images

    Image.fromarray(_photo("coffee").permute(1, 2, 0).numpy()).save(tmp_path / "coffee.jpg")
    assert main(["classify", "--model", "mobilenet_v2", str(tmp_path / "coffee.jpg")]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].endswith("coffee.jpg:") and rows[3].split()[:2] == ["1", "espresso"], rows
    for name in ("efficientnet_lite1", "efficientnet_lite2"):
        coffee, cat = classify_images([_photo("coffee"), _photo("chelsea")], name, top=3)
        assert coffee[0][0] == "espresso", (name, coffee)
        assert {label for label, _ in cat} == {"Egyptian cat", "tiger cat", "tabby"}, (name, cat)


def test_offline_error_names_the_offline_backbones():
    with pytest.raises(ModelError, match="offline backbones: efficientnet_lite0, efficientnet_lite1, "
                                         "efficientnet_lite2, mobilenet_v2"):
        pretrained_model("resnet18")   # no bundled weights, CONVLAB_OFFLINE set
    with pytest.raises(ModelError, match="offline backbones: efficientnet_lite0"):
        create_model("resnet18", pretrained=True)


def test_transfer_features_with_mobilenet_v2_and_predict(tmp_path, capsys):
    """`convlab transfer DIR --strategy features --backbone mobilenet_v2` at the backbone's
    own input size; the run names its backbone and `convlab predict` uses it."""
    write_folder(tmp_path / "photos", n_per_class=5, classes=("red", "blue"), size=40)
    out = tmp_path / "run"
    assert main(["transfer", str(tmp_path / "photos"), "--strategy", "features", "--backbone",
                 "mobilenet_v2", "--out", str(out)]) == 0
    assert "features: val acc 1.0000" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["backbone"]["name"] == "mobilenet_v2" and meta["preprocess"]["size"] == [224, 224]
    image = sorted((tmp_path / "photos" / "blue").iterdir())[0]
    assert main(["predict", str(out), str(image), "--top", "1"]) == 0
    assert capsys.readouterr().out.split(":")[1].split()[0] == "blue"


def test_every_strategy_with_mobilenet_v2_and_embed_and_show_with_lite2(tmp_path, capsys):
    """compare runs features, finetune, full and scratch on one split with MobileNetV2
    (torchvision's layer groups); embed and show features take Lite2 (timm's)."""
    write_folder(tmp_path / "photos", n_per_class=4, classes=("red", "blue"), size=40)
    out = tmp_path / "cmp"
    assert main(["transfer", str(tmp_path / "photos"), "--strategy", "compare", "--backbone",
                 "mobilenet_v2", "--epochs", "1", "--image-size", "32", "--batch-size", "8",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    for s in ("features", "finetune", "full", "scratch"):
        meta = json.loads((out / s / "meta.json").read_text())
        assert meta["model"]["name"] == "mobilenet_v2" and meta["transfer"]["strategy"] == s
    assert main(["embed", str(tmp_path / "photos"), "--backbone", "efficientnet_lite2",
                 "--image-size", "64", "--out", str(tmp_path / "emb.safetensors")]) == 0
    assert "images -> embeddings (8, 1280) from efficientnet_lite2" in capsys.readouterr().out
    assert main(["show", "efficientnet_lite2", "features", "--pretrained", "--out",
                 str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "features-conv_stem.png").stat().st_size > 1000


def test_backbones_table_and_chart(tmp_path, capsys):
    from convlab.analysis import model_stats
    from convlab.analysis.backbones import published_rows

    png = tmp_path / "comparison.png"
    assert main(["backbones", "--format", "json", "--batch-size", "1", "--batches", "1",
                 "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    rows = json.loads(text[:text.rindex("]") + 1])
    assert [r["backbone"] for r in rows] == OFFLINE
    for r in rows:
        stats = model_stats(r["backbone"])
        assert (r["parameters"], r["MACs"]) == (stats.params, stats.macs)
        assert r["embedding"] == 1280 and r["images/s"] > 0
        assert r["input"] == "3x{0}x{0}".format(model_spec(r["backbone"]).input_size)
    mobilenet = rows[-1]
    assert (mobilenet["top-1 %"], mobilenet["top-5 %"]) == (71.88, 90.29)
    assert "MobileNet_V2_Weights.IMAGENET1K_V1" in mobilenet["top-1/top-5 source"]
    assert [r["top-1 %"] for r in rows[:3]] == [74.85, 76.67, 77.47]   # timm's published figures
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and np.asarray(Image.open(png)).shape[1] > 600
    # torchvision's "GFLOPS" metadata counts multiply-adds: it equals convlab's MAC count
    for row in published_rows():
        assert row.macs == pytest.approx(model_stats(row.name).macs, rel=2e-3), row.name
        assert row.params == model_stats(row.name).params
