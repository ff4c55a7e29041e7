"""Export to ONNX / TorchScript with the parity check, and prediction with ONNX Runtime."""
from __future__ import annotations

import json

import onnx
import pytest
import torch

from convlab import CheckpointError, Predictor, TrainConfig
from convlab.cli import main
from convlab.export import PARITY_TOLERANCE, OnnxModel, export_run
from convlab.transfer import TransferConfig, transfer

from conftest import make_imageset


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A features (knn) run and a finetune run, made once for this module."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        data = make_imageset(n_per_class=4, classes=2, channels=3, size=32)
        cfg = TrainConfig(epochs=1, batch_size=4, val_split=0.25)
        feats = transfer(data, TransferConfig(head="knn", k=3, image_size=64), cfg,
                         out=root / "features", verbose=False)
        ft = transfer(data, TransferConfig(strategy="finetune", image_size=64), cfg,
                      out=root / "finetune", verbose=False)
    return {"features": feats.run_dir, "finetune": ft.run_dir, "data": data}


def test_onnx_export_parity_and_onnx_backend(runs):
    kind = "finetune"  # the features run is exported through the CLI below
    r = export_run(runs[kind], "onnx")
    assert r.path.name == "model.onnx" and r.max_abs_diff < PARITY_TOLERANCE and r.same_top1
    meta = json.loads({p.key: p.value for p in onnx.load(str(r.path)).metadata_props}["convlab_meta"])
    assert meta["classes"] == runs["data"].classes and meta["preprocess"]["size"] == [64, 64]
    images = runs["data"].images
    torch_p = Predictor(runs[kind]).probabilities(images)
    onnx_p = Predictor(runs[kind], backend="onnx").probabilities(images)
    assert torch.allclose(torch_p, onnx_p, atol=1e-4)
    assert torch.equal(torch_p.argmax(1), onnx_p.argmax(1))


def test_torchscript_export_has_metadata_and_parity(runs):
    r = export_run(runs["finetune"], "torchscript")
    extra = {"convlab_meta.json": ""}
    loaded = torch.jit.load(str(r.path), _extra_files=extra)
    assert json.loads(extra["convlab_meta.json"])["classes"] == runs["data"].classes
    assert r.max_abs_diff < PARITY_TOLERANCE and r.same_top1
    x = Predictor(runs["finetune"]).preprocess(runs["data"].images)
    with torch.no_grad():
        assert torch.equal(loaded(x).argmax(1), Predictor(runs["finetune"]).run.model(x).argmax(1))


def test_cli_export_and_predict_with_onnx(runs, tmp_path, capsys):
    from PIL import Image

    run = runs["features"]
    (run / "model.onnx").unlink(missing_ok=True)
    img = tmp_path / "x.png"
    Image.fromarray(runs["data"].images[0].permute(1, 2, 0).numpy()).save(img)
    assert main(["predict", str(run), str(img), "--backend", "onnx"]) != 0
    assert "convlab export" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert "same top-1: yes" in capsys.readouterr().out
    assert main(["predict", str(run), str(img), "--backend", "onnx"]) == 0
    onnx_line = capsys.readouterr().out
    assert main(["predict", str(run), str(img)]) == 0
    assert capsys.readouterr().out.split(":")[1].split()[0] == onnx_line.split(":")[1].split()[0]


def test_missing_onnx_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="convlab export"):
        OnnxModel(tmp_path / "model.onnx")
