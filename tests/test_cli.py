"""The core CLI: datasets, models, train, evaluate, predict, and one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

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
    write_folder(tmp_path / "pets", n_per_class=8, classes=("cat", "dog", "fox"), size=24)
    run = tmp_path / "run"
    code = main(["train", str(tmp_path / "pets"), "--model", "small_cnn", "--image-size", "32",
                 "--epochs", "3", "--batch-size", "8", "--lr", "0.003", "--val-split", "0.25",
                 "--out", str(run)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Epoch 3/3 - loss: " in out and " - val_acc: " in out and f"run saved in {run}" in out
    meta = json.loads((run / "meta.json").read_text())
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["preprocess"]["size"] == [32, 32]

    assert main(["evaluate", str(run), str(tmp_path / "pets"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 24 and len(result["confusion"]) == 3 and 0 <= result["top1"] <= 1

    image = tmp_path / "pets" / "dog" / "3.png"
    assert main(["predict", str(run), str(image), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count(",") == 1

    # resuming with more epochs continues from epoch 3
    code = main(["train", str(tmp_path / "pets"), "--model", "small_cnn", "--image-size", "32",
                 "--epochs", "4", "--batch-size", "8", "--lr", "0.003", "--val-split", "0.25",
                 "--out", str(run), "--resume"])
    out = capsys.readouterr().out
    assert code == 0 and "Epoch 4/4" in out and "Epoch 3/4" not in out


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
