"""A run's evaluation (evaluation.json), its plots and the self-contained HTML report."""
from __future__ import annotations

import base64
import json
import os
import re

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image
from scipy import ndimage

from convlab import ImageSet, TrainConfig, evaluate, load_run, train, write_report
from convlab.cli import main
from convlab.figures.plots import plot_history
from convlab.figures.report import write_run_plots
from convlab.training.evaluation import confident_mistakes, evaluate_run

from conftest import make_imageset, write_folder

PNG = b"\x89PNG\r\n\x1a\n"
TRAINING, VALIDATION, RATE = (31, 119, 180), (255, 127, 14), (44, 160, 44)  # matplotlib C0-C2


def _figure(path, inches=None) -> np.ndarray:
    """The PNG at `path` as an (H, W, 3) int array, checked to be a drawn figure: a PNG,
    not blank, and about `inches` (width, height) at the figures' 110 dpi (the tight
    bounding box trims or adds a little)."""
    assert path.read_bytes()[:8] == PNG
    image = Image.open(path)
    if inches:
        assert image.size == pytest.approx((inches[0] * 110, inches[1] * 110), rel=0.15)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    return pixels


def _count(pixels: np.ndarray, rgb, tol: int = 0) -> int:
    """Pixels of colour `rgb` (each channel within `tol`)."""
    return int((np.abs(pixels - np.asarray(rgb)) <= tol).all(-1).sum())


def _check_confusion_figure(path, counts: list[list[int]]) -> None:
    """Each cell is painted the colour of its share of the true class, so the pixels of
    each colour are in proportion to the cells that have it (up to 4 classes: about 5x4 in)."""
    confusion = np.array(counts, float)
    shares, cells = np.unique((confusion / confusion.sum(1, keepdims=True)).round(6),
                              return_counts=True)
    figure = _figure(path, (5, 4))
    painted = np.array([_count(figure, np.array(colormaps["Blues"](s)[:3]) * 255, tol=1)
                        for s in shares])
    assert painted / painted.sum() == pytest.approx(cells / cells.sum(), abs=0.03)


# tiny tensors: one thread is many times faster than two on a shared 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_writes_plots_and_report_embeds_them(tmp_path, capsys):
    write_folder(tmp_path / "pics", n_per_class=10, classes=("cat", "dog", "owl"), size=12)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "pics"), "--model", "mnist_cnn", "--channels", "1",
                 "--epochs", "2", "--val-split", "0.3", "--out", str(run), "--device", "cpu"]) == 0
    assert "plots: history.png, evaluation.json, confusion.png" in capsys.readouterr().out
    history = _figure(run / "history.png", (13, 3.6))  # three panels side by side
    assert all(_count(history, line) > 100 for line in (TRAINING, VALIDATION, RATE))
    counts = json.loads((run / "evaluation.json").read_text())
    # a folder has no test split: the run's own validation split (3 of 10 per class)
    assert counts["split"] == "validation" and counts["n"] == 9
    assert sum(map(sum, counts["confusion"])) == 9
    assert counts["classes"] == ["cat", "dog", "owl"]
    assert counts["top1_error"] == 1 - counts["top1"]
    _check_confusion_figure(run / "confusion.png", counts["confusion"])

    assert main(["report", str(run), "--device", "cpu"]) == 0
    page = (run / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    embedded = {base64.b64decode(b) for b in images}
    assert {(run / n).read_bytes() for n in ("history.png", "confusion.png")} <= embedded
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for text in ("Training curves", "Metrics by epoch", "Evaluation on the validation set",
                 "Configuration", "Environment", "mnist_cnn", "owl", "batch_size", "torch"):
        assert text in page
    meta = json.loads((run / "meta.json").read_text())
    assert f"{meta['metrics'][-1]['loss']:.4g}" in page


def test_write_run_plots_on_given_data_shows_the_confident_mistakes(tmp_path):
    data = make_imageset(n_per_class=8, classes=3, size=12)
    train(data, "mnist_cnn", TrainConfig(epochs=1, val_split=0.0), out=tmp_path / "r",
          device="cpu", verbose=False)
    wrong = ImageSet(data.images, (data.labels + 1) % 3, data.classes, "relabelled")
    evaluation = evaluate_run(tmp_path / "r", data=wrong, split="relabelled")
    written = write_run_plots(tmp_path / "r", data=wrong)
    assert set(written) == {"history", "confusion", "mistakes"}
    counts = json.loads(evaluation.path.read_text())
    run = load_run(tmp_path / "r")
    expected = evaluate(run.model, wrong, run.preprocess)
    assert counts["confusion"] == expected.confusion.tolist()
    assert (counts["top1"], counts["top5"], counts["n"]) == (expected.top1, expected.top5, expected.n)
    assert counts["loss"] == pytest.approx(expected.loss, rel=1e-5)
    # the recorded mistakes are wrong predictions of `wrong`, most confident first
    mistakes = counts["mistakes"]
    assert mistakes and all(m["true"] == int(wrong.labels[m["index"]]) != m["predicted"]
                            for m in mistakes)
    confidences = [m["confidence"] for m in mistakes]
    assert confidences == sorted(confidences, reverse=True)
    # one thumbnail per recorded mistake: each image's bright bar (uint8 220) drawn once
    bars, _ = ndimage.label((_figure(written["mistakes"]) == 220).all(-1))
    assert (np.bincount(bars.ravel())[1:] > 1000).sum() == len(mistakes)


def test_evaluate_run_runs_the_model_once(tmp_path):
    data = make_imageset(n_per_class=8, classes=3, size=12)
    train(data, "mnist_cnn", TrainConfig(epochs=1, val_split=0.0), out=tmp_path / "r",
          device="cpu", verbose=False)
    network = type(load_run(tmp_path / "r").model)
    calls = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: calls.append(len(args[0])) if type(module) is network else None)
    try:  # no mistakes recorded: no evidence maps, so only the evaluation runs the model
        evaluation = evaluate_run(tmp_path / "r", data=data, split="training", mistakes=0)
    finally:
        hook.remove()
    assert calls == [len(data)]  # one pass over the 24 images gives counts and mistakes
    run = load_run(tmp_path / "r")
    assert evaluation.result.confusion.tolist() == evaluate(run.model, data, run.preprocess).confusion.tolist()


def test_report_of_an_in_memory_run_still_has_the_curves(tmp_path):
    data = make_imageset(n_per_class=6, classes=2, size=12)
    train(data, "mnist_linear", TrainConfig(epochs=2, val_split=0.0), out=tmp_path / "r",
          device="cpu", verbose=False)
    assert evaluate_run(tmp_path / "r") is None  # no data to evaluate on: nothing written
    page = write_report(tmp_path / "r").read_text()
    assert page.count("data:image/png;base64,") == 1  # the curves
    assert "could not be found again" in page


def test_confident_mistakes_orders_wrong_predictions_by_confidence():
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 9.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    idx, pred, conf = confident_mistakes(logits, labels, k=5)
    assert idx.tolist() == [2, 3, 1]  # wrong ones only, most confident first
    assert pred.tolist() == [1, 0, 1]
    assert float(conf[0]) == pytest.approx(1 / (1 + torch.e ** -9))


def test_plot_history_without_validation(tmp_path):
    metrics = [{"epoch": e, "loss": 1 / e, "acc": 0.5 + e / 10, "val_loss": None,
                "val_acc": None, "lr": 0.1 * 0.5 ** e, "seconds": 1.0} for e in range(1, 5)]
    history = _figure(plot_history(metrics, tmp_path / "h.png"), (13, 3.6))
    assert _count(history, VALIDATION) == 0  # no validation line, not even in a legend
    assert _count(history, TRAINING) > 100 and _count(history, RATE) > 100


def test_plot_history_draws_only_the_series_a_run_has(tmp_path):
    # a features run: one validation accuracy, no training loss, accuracy or rate
    metrics = [{"epoch": 1, "val_acc": 0.75, "seconds": 2.0}]
    history = _figure(plot_history(metrics, tmp_path / "h.png"), (5, 3.6))  # one panel
    assert _count(history, VALIDATION) > 20
    assert _count(history, TRAINING) == 0 and _count(history, RATE) == 0


def _metrics_headers(page: str) -> list[str]:
    table = re.search(r"<h2>Metrics by epoch</h2><table><tr>(.*?)</tr>", page).group(1)
    return re.findall(r"<th>(.*?)</th>", table)


def test_metrics_table_shows_lr_once_and_no_empty_validation_columns(tmp_path):
    data = make_imageset(n_per_class=6, classes=2, size=12)
    train(data, "mnist_linear", TrainConfig(epochs=2, val_split=0.0), out=tmp_path / "r",
          device="cpu", verbose=False)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert "lr" in meta["metrics"][0]["extra"]  # the schedule repeats lr among the extras
    headers = _metrics_headers(write_report(tmp_path / "r").read_text())
    assert headers == ["epoch", "loss", "accuracy", "lr", "seconds"]


def test_metrics_table_keeps_validation_columns_when_there_is_a_validation_split(tmp_path):
    data = make_imageset(n_per_class=6, classes=2, size=12)
    train(data, "mnist_linear", TrainConfig(epochs=2, val_split=0.5), out=tmp_path / "r",
          device="cpu", verbose=False)
    page = write_report(tmp_path / "r").read_text()
    assert _metrics_headers(page) == ["epoch", "loss", "accuracy", "val loss", "val accuracy",
                                      "lr", "seconds"]
    val_loss = json.loads((tmp_path / "r" / "meta.json").read_text())["metrics"][-1]["val_loss"]
    assert f"{val_loss:.4g}" in page


def test_report_reads_the_evaluation_and_the_command_makes_it_first(tmp_path):
    write_folder(tmp_path / "pics", n_per_class=6, classes=("cat", "dog"), size=12)
    run = tmp_path / "run"
    train(str(tmp_path / "pics"), "mnist_cnn", TrainConfig(epochs=1, val_split=0.5), out=run,
          channels=1, device="cpu", verbose=False)
    page = write_report(run).read_text()  # the report alone evaluates nothing
    assert not (run / "evaluation.json").exists() and "No evaluation" in page

    assert main(["report", str(run), "--device", "cpu"]) == 0  # evaluates first, then draws
    counts = json.loads((run / "evaluation.json").read_text())
    assert counts["split"] == "validation" and counts["n"] == 6
    page = (run / "report.html").read_text()
    assert "Evaluation on the validation set" in page and "No evaluation" not in page
    _check_confusion_figure(run / "confusion.png", counts["confusion"])

    first = (run / "evaluation.json").stat().st_mtime_ns
    assert main(["report", str(run), "--device", "cpu"]) == 0  # up to date: not evaluated again
    assert (run / "evaluation.json").stat().st_mtime_ns == first
    before_meta = (run / "meta.json").stat().st_mtime_ns - 10**9
    os.utime(run / "evaluation.json", ns=(before_meta, before_meta))  # the run changed since
    assert main(["report", str(run), "--device", "cpu"]) == 0
    assert (run / "evaluation.json").stat().st_mtime_ns > first
