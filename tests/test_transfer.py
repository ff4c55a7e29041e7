"""Heads on embeddings, features runs, fine-tuning details, and `convlab transfer` on a folder."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from convlab import ConfigError, DatasetError, Predictor, TrainConfig, load_run
from convlab.cli import main
from convlab.models import create_model
from convlab.transfer import (FreezeBatchNorm, TransferConfig, _split_for_finetune, advice, fit_head,
                              save_features_run, transfer)

from conftest import make_imageset, write_folder


def _clusters(n_per_class=30, k=3, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=gen) * 4
    labels = torch.arange(k).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), d, generator=gen), labels


@pytest.mark.parametrize("kind", ["linear", "mlp", "knn", "svm"])
def test_every_head_separates_clusters(kind):
    emb, labels = _clusters()
    head = fit_head(kind, emb, labels)
    probs = head.predict_proba(emb)
    assert probs.shape == (90, 3)
    assert torch.allclose(probs.sum(1), torch.ones(90), atol=1e-4)
    assert (probs.argmax(1) == labels).float().mean() == 1.0


def test_knn_probabilities_are_vote_shares():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    head = fit_head("knn", emb, labels, k=3)
    # query near class 0: neighbours by cosine are rows 0, 1 and then 4 (0.2, 0.8)
    p = head.predict_proba(torch.tensor([[1.0, 0.05]]))
    assert torch.allclose(p, torch.tensor([[2 / 3, 1 / 3]]), atol=1e-4)


def test_head_errors():
    emb, labels = _clusters()
    with pytest.raises(ConfigError, match="unknown head 'tree'.*valid: knn, linear, mlp, svm"):
        fit_head("tree", emb, labels)
    with pytest.raises(DatasetError, match=r"embeddings \(N, D\) and labels \(N,\)"):
        fit_head("linear", emb, labels[:5])
    with pytest.raises(ConfigError, match="one or two hidden layers"):
        fit_head("mlp", emb, labels, hidden=(8, 8, 8))


def test_features_run_loads_in_predictor_like_the_head(tmp_path):
    from convlab.embed import Embedder

    data = make_imageset(n_per_class=4, classes=2, channels=3, size=32)
    embedder = Embedder(image_size=64)
    emb = embedder.embed(data.images)
    head = fit_head("svm", emb, data.labels)
    run = save_features_run(tmp_path / "run", head, classes=data.classes, image_size=64)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["kind"] == "features" and meta["backbone"]["name"] == "efficientnet_lite0"
    assert meta["preprocess"]["size"] == [64, 64] and meta["head"]["kind"] == "svm"
    probs = Predictor(run).probabilities(data.images)
    assert torch.allclose(probs, head.predict_proba(emb), atol=1e-4)
    assert load_run(run).classes == data.classes


def test_finetune_freezes_early_blocks_and_their_batchnorm():
    model = create_model("efficientnet_lite0", num_classes=3)
    head_p, body_p, frozen_bn = _split_for_finetune(model, "classifier", 1)
    assert {id(p) for p in head_p} == {id(model.classifier.weight), id(model.classifier.bias)}
    assert model.conv_head.weight.requires_grad and model.blocks[6][0].conv_pw.weight.requires_grad
    assert not model.conv_stem.weight.requires_grad and not model.blocks[5][0].conv_pw.weight.requires_grad
    assert model.bn1 in frozen_bn and model.bn2 not in frozen_bn
    model.train()
    FreezeBatchNorm(frozen_bn).on_epoch_start(None)
    assert not model.bn1.training and model.bn2.training and model.training


def test_finetune_run_keeps_frozen_weights_and_statistics(tmp_path):
    data = make_imageset(n_per_class=4, classes=2, channels=3, size=32)
    r = transfer(data, TransferConfig(strategy="finetune", unfreeze=1, image_size=48),
                 TrainConfig(epochs=1, batch_size=4, val_split=0.25), out=tmp_path / "ft",
                 verbose=False)
    from convlab.models import pretrained_model
    start = pretrained_model("efficientnet_lite0", num_classes=2)
    tuned = load_run(r.run_dir).model
    assert torch.equal(tuned.blocks[2][0].conv_pw.weight, start.blocks[2][0].conv_pw.weight)
    assert torch.equal(tuned.blocks[2][0].bn1.running_mean, start.blocks[2][0].bn1.running_mean)
    assert not torch.equal(tuned.conv_head.weight, start.conv_head.weight)
    assert r.val_acc is not None and r.detail["trainable_parameters"] < 3_400_000


def test_advice_follows_the_lecture_table():
    assert advice(10, 0.95, 5)["suggested"] == "features"
    assert advice(500, 0.95, 5)["suggested"] == "finetune"
    assert advice(500, 0.4, 5)["suggested"] == "full"
    assert "earlier layer" in advice(10, 0.4, 5)["text"]


def test_cli_compare_on_a_folder_writes_runs_predict_uses(tmp_path, capsys):
    write_folder(tmp_path / "photos", n_per_class=4, classes=("red", "blue"), size=40)
    out = tmp_path / "cmp"
    code = main(["transfer", str(tmp_path / "photos"), "--strategy", "compare", "--epochs", "1",
                 "--image-size", "32", "--out", str(out), "--batch-size", "8"])
    text = capsys.readouterr().out
    assert code == 0
    for s in ("features", "finetune", "full", "scratch"):
        assert s in text and (out / s / "meta.json").exists()
    assert "the lecture's advice: little data" in text and "won here:" in text
    table = json.loads((out / "compare.json").read_text())
    assert [r["strategy"] for r in table["results"]] == ["features", "finetune", "full", "scratch"]
    image = sorted((tmp_path / "photos" / "red").iterdir())[0]
    for s in ("features", "finetune"):
        assert main(["predict", str(out / s), str(image), "--top", "2"]) == 0
        line = capsys.readouterr().out
        assert str(image) in line and "red" in line and "blue" in line


def test_class_with_one_image_is_refused(tmp_path, capsys):
    write_folder(tmp_path / "photos", n_per_class=3, classes=("a", "b"), size=32)
    for p in sorted((tmp_path / "photos" / "b").iterdir())[1:]:
        p.unlink()
    code = main(["transfer", str(tmp_path / "photos"), "--strategy", "features", "--image-size", "48",
                 "--out", str(tmp_path / "run")])
    assert code != 0
    assert "at least 2 images per class; too few in: b" in capsys.readouterr().err


def test_report_of_a_features_run_shows_its_validation_accuracy(tmp_path, capsys):
    # a features run records no training loss, accuracy or learning rate: the report
    # draws and shows only what it has (validation accuracy, time)
    write_folder(tmp_path / "photos", n_per_class=4, classes=("red", "blue"), size=32)
    r = transfer(str(tmp_path / "photos"), TransferConfig(strategy="features", image_size=32),
                 TrainConfig(val_split=0.5), out=tmp_path / "feat", verbose=False)
    meta = json.loads((r.run_dir / "meta.json").read_text())
    assert "loss" not in meta["metrics"][0] and meta["metrics"][0]["val_acc"] == r.val_acc
    assert main(["report", str(r.run_dir), "--device", "cpu"]) == 0
    assert "report written to" in capsys.readouterr().out
    page = (r.run_dir / "report.html").read_text()
    assert f"<b>{r.val_acc:.2%}</b><span>validation accuracy" in page
    assert "training accuracy" not in page and "Evaluation on the validation set" in page
    assert (r.run_dir / "history.png").exists()


@pytest.mark.parametrize("strategy", ["features", "finetune"])
def test_every_strategy_records_the_test_set_in_one_shape(tmp_path, strategy):
    from convlab import evaluate

    data = make_imageset(n_per_class=6, classes=2, channels=3, size=32)
    train_set, test_set = data.split(0.34, 0)
    train_set, val_set = train_set.split(0.25, 0)
    r = transfer(data, TransferConfig(strategy=strategy, unfreeze=1, image_size=48),
                 TrainConfig(epochs=1, batch_size=4, val_split=0.25), out=tmp_path / strategy,
                 evaluate_test=True, verbose=False, _split=(train_set, val_set, test_set))
    recorded = json.loads((r.run_dir / "meta.json").read_text())["test"]
    run = load_run(r.run_dir)
    again = evaluate(run.model, test_set, run.preprocess)  # the saved run, counted anew
    assert set(recorded) == {"top1", "top5", "loss", "n"} and recorded["n"] == len(test_set) == 4
    assert recorded["top1"] == again.top1 == r.test_acc and recorded["top5"] == 1.0
    assert recorded["loss"] == pytest.approx(again.loss, rel=1e-4)
