"""The core CLI: datasets, models, train, evaluate, predict, and one-line errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from convlab.cli import main

from conftest import write_folder


def test_models_lists_lecture_counts(capsys):
    assert main(["models", "--family", "lecture"]) == 0
    out = capsys.readouterr().out
    assert "mnist_cnn" in out and "63,626" in out and "7,850" in out


def test_datasets_lists_availability(capsys):
    assert main(["datasets", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["digits"]["available"] == "yes" and rows["mnist-5k"]["train"] == 5000
    assert rows["fashion-mnist"]["test"] == 10000


def test_unknown_names_give_one_line_and_exit_2(capsys, tmp_path):
    assert main(["train", "fashion-mnst", "--model", "mnist_cnn", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean fashion-mnist?" in err
    assert main(["train", "digits", "--model", "lenet", "--out", str(tmp_path / "r")]) == 2
    assert "did you mean lenet5?" in capsys.readouterr().err


def test_train_folder_then_evaluate_and_predict(tmp_path, capsys):
    from convlab import evaluate, load_run
    from convlab.data import load_dataset

    write_folder(tmp_path / "pets", n_per_class=8, classes=("cat", "dog", "fox"), size=24)
    run = tmp_path / "run"
    # 5 epochs of batches of 4, not 3 of 8 (there 2 of seeds 0-5 stayed at chance): seeds 0-5
    # all reached top-1 >= 2/3 and a loss under 0.45
    code = main(["train", str(tmp_path / "pets"), "--model", "small_cnn", "--image-size", "32",
                 "--epochs", "5", "--batch-size", "4", "--lr", "0.003", "--val-split", "0.25",
                 "--out", str(run)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Epoch 5/5 - loss: " in out and " - val_acc: " in out and f"run saved in {run}" in out
    meta = json.loads((run / "meta.json").read_text())
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["preprocess"]["size"] == [32, 32]

    assert main(["evaluate", str(run), str(tmp_path / "pets"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    confusion = result["confusion"]
    assert result["n"] == 24 and [sum(row) for row in confusion] == [8, 8, 8]  # rows: true class
    assert result["top1"] == sum(confusion[i][i] for i in range(3)) / 24
    # learnt: well above chance (1/3) and below the loss of a uniform guess (ln 3)
    assert result["top1"] >= 0.6 and result["loss"] < 0.5 * math.log(3)
    # the CLI's numbers are the Python API's, and meta.json's last val_acc is the accuracy
    # on the run's own validation split (3 classes x 2 images, split as training did)
    model = load_run(run)
    data = load_dataset(str(tmp_path / "pets"), "train", channels=3, size=32)
    api = evaluate(model.model, data, model.preprocess)
    assert result["top1"] == api.top1 and result["loss"] == pytest.approx(api.loss, rel=1e-5)
    _, val = data.split(0.25, meta["train"]["seed"])
    on_val = evaluate(model.model, val, model.preprocess)
    assert len(val) == 6 and meta["metrics"][-1]["val_acc"] == on_val.top1
    assert meta["metrics"][-1]["val_loss"] == pytest.approx(on_val.loss, rel=1e-4)
    # without a dataset, evaluate counts what `convlab report` evaluates: a folder has no
    # test split, so the run's own validation split (6 images), not the 24 of the folder
    assert main(["evaluate", str(run), "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["n"] == 6 and default["confusion"] == on_val.confusion.tolist()
    assert default["top1"] == on_val.top1
    assert main(["evaluate", str(run)]) == 0
    assert "(validation)" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--split", "train", "--json"]) == 0  # all of the folder
    assert json.loads(capsys.readouterr().out)["n"] == 24

    image = tmp_path / "pets" / "dog" / "3.png"
    assert main(["predict", str(run), str(image), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count(",") == 1

    # resuming with more epochs continues from epoch 5
    code = main(["train", str(tmp_path / "pets"), "--model", "small_cnn", "--image-size", "32",
                 "--epochs", "6", "--batch-size", "4", "--lr", "0.003", "--val-split", "0.25",
                 "--out", str(run), "--resume"])
    out = capsys.readouterr().out
    assert code == 0 and "Epoch 6/6" in out and "Epoch 5/6" not in out


def test_predict_refuses_non_images(tmp_path, capsys):
    write_folder(tmp_path / "d", n_per_class=4, classes=("a", "b"), size=16)
    main(["train", str(tmp_path / "d"), "--model", "mnist_linear", "--epochs", "1", "--val-split", "0",
          "--image-size", "16", "--out", str(tmp_path / "run")])
    capsys.readouterr()
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: not a readable image" in capsys.readouterr().err


def test_evaluate_refuses_other_classes(tmp_path, capsys):
    write_folder(tmp_path / "d", n_per_class=4, classes=("a", "b"), size=16)
    write_folder(tmp_path / "e", n_per_class=4, classes=("x", "y"), size=16)
    main(["train", str(tmp_path / "d"), "--model", "mnist_linear", "--epochs", "1", "--val-split", "0",
          "--image-size", "16", "--out", str(tmp_path / "run")])
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), str(tmp_path / "e")]) == 2
    assert "classes ['a', 'b'] differ from the dataset's ['x', 'y']" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "convlab", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("convlab ")
