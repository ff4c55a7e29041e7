"""Where a network looks: Grad-CAM and occlusion on a model that must look at one half,
top patches cropped to the receptive field on a model of known geometry, the maps in
the evaluation and the report, `convlab explain` and `show top-patches`, and the errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convlab import ImageSet, TrainConfig, train
from convlab.analysis.attribution import (attribution_copy, cam_layer, check_spatial_layer,
                                          class_maps, top_patches, unit_projections, upsample_maps)
from convlab.checkpoint import load_run
from convlab.cli import main
from convlab.errors import ModelError
from convlab.figures.report import write_run_plots
from convlab.models import create_model
from convlab.training.evaluation import MAP_SIDE, evaluate_run

pytestmark = pytest.mark.usefixtures("one_thread")


def halves(n_per_class: int, seed: int) -> ImageSet:
    """28x28 noise with a bright bar somewhere in the left half, which decides: class
    'vertical' has a vertical bar there, class 'horizontal' a horizontal one. The right
    half is noise only."""
    gen = torch.Generator().manual_seed(seed)
    n = 2 * n_per_class
    labels = torch.arange(2).repeat_interleave(n_per_class)
    images = (torch.rand(n, 1, 28, 28, generator=gen) * 60).to(torch.uint8)
    for i, c in enumerate(labels.tolist()):
        h, w = (12, 3) if c == 0 else (3, 12)
        top = int(torch.randint(0, 28 - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, 14 - w + 1, (1,), generator=gen))
        images[i, 0, top:top + h, left:left + w] = 230
    return ImageSet(images, labels, ["vertical", "horizontal"], "halves")


@pytest.fixture(scope="module")
def halves_run(tmp_path_factory):
    from convlab._runtime import one_thread

    out = tmp_path_factory.mktemp("runs") / "halves"
    with one_thread():
        train(halves(100, 0), "mnist_cnn", TrainConfig(epochs=4, batch_size=20, lr=0.05,
                                                       val_split=0.0),
              out=out, verbose=False, log=lambda s: None)
    return out


def _left_share(maps: torch.Tensor) -> torch.Tensor:
    """The share of each map's mass (N, H, W) in the left half of the image."""
    w = maps.shape[-1]
    return maps[..., : w // 2].sum((1, 2)) / maps.sum((1, 2)).clamp_min(1e-12)


def test_grad_cam_and_occlusion_look_at_the_deciding_half(halves_run):
    run = load_run(halves_run)
    model = attribution_copy(run.model)
    test = halves(8, seed=1)
    x = run.preprocess(test.images)
    cam = class_maps(model, x, method="gradcam")
    assert cam.targets == test.labels.tolist()            # it learned the task
    assert cam.layer == cam_layer(model, (1, 28, 28)) == "network1.2"
    maps = upsample_maps(cam.maps, (28, 28))
    left = _left_share(maps)
    assert (left > 0.5).all() and left.mean() > 0.75, left      # a uniform map would give 0.5
    occ = class_maps(model, x, method="occlusion")
    left_occ = _left_share(occ.maps)
    assert (left_occ > 0.6).all() and left_occ.mean() > 0.8, left_occ
    # they agree: both maps peak in the left half of every image
    for m in (maps, occ.maps):
        assert (m.flatten(1).argmax(1) % 28 < 14).all()


def test_explain_cli_writes_maps_for_a_run(halves_run, tmp_path, capsys):
    test = halves(1, seed=2)
    files = []
    for i, name in enumerate(("a.png", "b.png")):
        Image.fromarray(test.images[i, 0].numpy(), "L").save(tmp_path / name)
        files.append(str(tmp_path / name))
    assert main(["explain", str(halves_run), *files, "--out", str(tmp_path / "maps")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("a.png: predicted vertical") and \
        out[1].startswith("b.png: predicted horizontal")
    for name in ("explain-a-gradcam.png", "explain-b-gradcam.png"):
        img = np.asarray(Image.open(tmp_path / "maps" / name).convert("RGB"))
        assert img.shape[0] > 200 and img.std() > 20
    assert main(["explain", str(halves_run), files[0], "--method", "occlusion", "--class",
                 "horizontal", "--out", str(tmp_path / "maps")]) == 0
    assert "map for horizontal" in capsys.readouterr().out
    assert (tmp_path / "maps" / "explain-a-occlusion.png").is_file()
    assert main(["explain", str(halves_run), files[0], "--class", "horizonal"]) == 2
    err = capsys.readouterr().err
    assert "unknown class 'horizonal' (did you mean horizontal?)" in err and \
        "vertical, horizontal" in err
    assert main(["explain", "resnet18", files[0]]) == 2
    assert "no bundled pretrained weights" in capsys.readouterr().err
    assert main(["explain", str(halves_run), files[0], "--layer", "network2"]) == 2
    assert "layer 'network2' (Linear, output 2) has no Grad-CAM maps" in capsys.readouterr().err
    assert main(["explain", str(halves_run), files[0], "--method", "occlusion", "--layer",
                 "network1.0"]) == 2
    assert "occlusion hides parts of the image itself" in capsys.readouterr().err


def _known_geometry_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 5, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(5 * 7 * 7, 3)).eval()


def test_top_patch_crops_are_the_receptive_field_worked_by_hand():
    # conv 3x3 stride 2 pad 1, then conv 3x3 stride 2: layer '2' sees 3 + 2*2 = 7 pixels,
    # jump 4, and unit (y, x) sees rows 4y-1 .. 4y+5 (the padding moves it up by one)
    model = _known_geometry_model()
    images = (torch.rand(12, 3, 31, 31, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    patches = top_patches(model, images, lambda x: x, "2", units=3, k=4)
    assert patches.rf.size == (7, 7) and patches.rf.jump == (4, 4) and patches.map_size == (7, 7)
    with torch.no_grad():
        act = model[:3](images.float() / 255)                        # (N, 5, 7, 7)
    for u, channel in enumerate(patches.units):
        best = act[:, channel].flatten(1).max(1).values               # each image's strongest
        assert [h[0] for h in patches.hits[u]] == best.topk(4).indices.tolist()
        for (idx, y, x, value), crop, proj in zip(patches.hits[u], patches.crops[u],
                                                  patches.projections[u]):
            assert value == pytest.approx(float(act[idx, channel, y, x]))
            top, left = 4 * y - 1, 4 * x - 1
            expected = images[idx][:, max(top, 0):top + 7, max(left, 0):left + 7]
            assert torch.equal(crop, expected) and proj.shape == crop.shape
    # the deconvnet projection of a unit reaches no pixel outside its receptive field
    idx, y, x, _ = patches.hits[0][0]
    full = unit_projections(model, images[idx:idx + 1].float() / 255, "2", [(0, y, x)])[0]
    outside = torch.ones(31, 31, dtype=torch.bool)
    outside[max(4 * y - 1, 0):4 * y + 6, max(4 * x - 1, 0):4 * x + 6] = False
    assert full.abs().sum() > 0 and full[:, outside].abs().max() == 0
    guided = unit_projections(model, images[idx:idx + 1].float() / 255, "2", [(0, y, x)], "guided")
    assert guided[0][:, outside].abs().max() == 0


def test_bad_layers_are_refused_with_the_reason():
    model = _known_geometry_model()
    with pytest.raises(ModelError, match=r"unknown layer '7'.*valid: 0, 1, 2, 3"):
        check_spatial_layer(model, (3, 31, 31), "7")
    with pytest.raises(ModelError, match=r"layer '5' \(Linear, output 3\) has no top patches: each "
                                         r"of its units sees the whole image"):
        top_patches(model, torch.zeros(2, 3, 31, 31, dtype=torch.uint8), lambda x: x, "5")


def test_show_top_patches_cli(halves_run, tmp_path, capsys):
    test = halves(6, seed=3)
    for i, img in enumerate(test.images):
        Image.fromarray(img[0].numpy(), "L").save(tmp_path / f"{i}.png")
    out = tmp_path / "fig"
    assert main(["show", str(halves_run), "top-patches", "--layer", "network1.3", "--data",
                 str(tmp_path), "--units", "3", "--k", "4", "--out", str(out)]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(out / "top-patches-network1.3.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[1] > 300 and img.std() > 20
    assert main(["show", "mnist_cnn", "top-patches", "--layer", "network2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "layer 'network2' (Linear, output 10) has no top patches" in err and "network1.3" in err
    assert main(["show", "mnist_cnn", "top-patches", "--layer", "network9", "--out", str(out)]) == 2
    assert "unknown layer 'network9'" in capsys.readouterr().err
    assert main(["show", "mnist_cnn", "top-patches", "--out", str(out)]) == 2
    assert "name the layer with --layer" in capsys.readouterr().err


def test_evaluation_records_maps_and_the_report_draws_them(halves_run, tmp_path):
    data = halves(6, seed=4)
    wrong = ImageSet(data.images, 1 - data.labels, data.classes, "swapped")   # all mistakes
    ev = evaluate_run(halves_run, data=wrong, split="swapped", mistakes=6)
    info = json.loads(ev.path.read_text())
    # a 28x28 input: occlusion (see mistake_maps)
    assert info["maps"] == {"method": "occlusion", "layer": "", "class": "predicted"}
    for m in info["mistakes"]:
        cam = torch.tensor(m["map"])
        assert cam.shape == (MAP_SIDE, MAP_SIDE) and cam.min() >= 0 and cam.max() == 1
        assert _left_share(cam[None])[0] > 0.6     # the deciding half
    plots = write_run_plots(halves_run, data=wrong)
    assert plots["mistakes"].is_file()
    from convlab.figures.report import write_report

    page = write_report(halves_run).read_text()
    assert "occlusion, the drop of the class score" in page


def test_pretrained_backbone_on_a_real_photo(tmp_path, capsys):
    from skimage import data as skdata

    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(skdata.chelsea()).save(photo)
    assert main(["explain", "efficientnet_lite0", str(photo), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "predicted tiger cat" in out or "predicted tabby" in out or "predicted Egyptian cat" in out
    assert (tmp_path / "explain-chelsea-gradcam.png").is_file()
    assert main(["show", "efficientnet_lite0", "top-patches", "--pretrained", "--layer",
                 "blocks.1", "--units", "2", "--k", "3", "--limit", "4", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("top-patches-blocks.1.png")
    model = create_model("efficientnet_lite0", 1000, pretrained=True)
    assert cam_layer(model, (3, 224, 224)) == "bn2"


def test_larger_inputs_get_grad_cam_maps_in_the_evaluation():
    from convlab.models import default_preprocess
    from convlab.training.evaluation import OCCLUSION_SIDE, mistake_maps

    model = create_model("small_cnn", 3, input_size=96).eval()
    pre, _ = default_preprocess("small_cnn", 3, 96)
    images = (torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    how, maps = mistake_maps(model, images, pre, torch.tensor([0, 2]))
    assert 96 > OCCLUSION_SIDE and how == {"method": "gradcam", "layer": cam_layer(model, (3, 96, 96))}
    assert all(len(m) <= MAP_SIDE and len(m[0]) <= MAP_SIDE for m in maps)


def test_a_head_without_gradients_is_refused_for_grad_cam_but_occluded():
    from convlab.models.backbone import FeatureExtractor
    from convlab.models.heads import FeaturesModel, KNNHead

    head = KNNHead(32 * 14 * 14, 3, size=5, k=2)
    head.remember(torch.randn(5, 32 * 14 * 14), torch.tensor([0, 1, 2, 0, 1]))
    model = attribution_copy(FeaturesModel(FeatureExtractor(create_model("mnist_cnn", 3), "network2"),
                                           head))
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ModelError, match="nearest-neighbour head votes by index"):
        class_maps(model, x, [0, 1], method="gradcam")
    assert class_maps(model, x, [0, 1], method="occlusion").maps.shape == (2, 28, 28)
