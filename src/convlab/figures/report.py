"""Per-run plots and the HTML report of a run directory; both read results, neither
evaluates.

write_run_plots() draws into a run: history.png (loss, accuracy, learning rate by
epoch, from meta.json's metrics), and from RUN/evaluation.json (written by
convlab.training.evaluation.evaluate_run) confusion.png and mistakes.png (the most
confidently wrong images, each with the evidence map the evaluation recorded for it). write_report() puts these with the configuration and the
environment into one self-contained report.html: images inlined as data URIs, inline
CSS, no scripts, no links out, so it opens offline and can be mailed as one file.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import platform
from pathlib import Path

import torch

from ..checkpoint import EVALUATION_FILE, META_FILE, load_run, read_meta
from ..data import ImageSet, Preprocess
from ..errors import DatasetError
from ..files import atomic_write_bytes
from .plots import HISTORY_KEYS, plot_confusion, plot_detections, plot_history, plot_mistakes

__all__ = ["read_evaluation", "write_run_plots", "write_report", "PLOT_FILES", "REPORT_FILE"]

REPORT_FILE = "report.html"
PLOT_FILES = {"history": "history.png", "confusion": "confusion.png", "mistakes": "mistakes.png",
              "detections": "detections.png"}


def read_evaluation(run_dir: str | os.PathLike) -> dict | None:
    """RUN/evaluation.json as a dict, or None when the run has not been evaluated."""
    path = Path(run_dir) / EVALUATION_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _map_method(maps: dict) -> str:
    """How evaluation.json's evidence maps were made, in words."""
    if maps.get("method") == "gradcam":
        return f"Grad-CAM on layer {maps.get('layer')}"
    return "occlusion, the drop of the class score when a grey square hides each place"


def _older(path: Path, than: Path) -> bool:
    """True when `path` is missing or older than `than`."""
    return not path.exists() or path.stat().st_mtime < than.stat().st_mtime


def write_run_plots(run_dir: str | os.PathLike, *, data: ImageSet | None = None) -> dict[str, Path]:
    """Draw history.png, confusion.png and mistakes.png into a run; returns them by name.

    history.png comes from meta.json, the other two from evaluation.json (none without
    it). evaluation.json names the mistakes by their index in the evaluated set, so the
    mistakes grid is drawn when `data`, that set (evaluate_run() returns it), is given;
    without it a mistakes.png older than evaluation.json is removed rather than shown
    beside counts it does not belong to.
    """
    path = Path(run_dir)
    meta = read_meta(path)
    written: dict[str, Path] = {}
    metrics = meta.get("metrics", [])
    model_name = meta.get("model", {}).get("name", "")
    if any(m.get(k) is not None for m in metrics for k in HISTORY_KEYS):
        written["history"] = plot_history(metrics, path / PLOT_FILES["history"],
                                          title=f"{model_name} on {meta['dataset']['name']}")
    evaluation = read_evaluation(path)
    if evaluation is None:
        return written
    split, n = evaluation["split"], evaluation["n"]
    if data is not None and len(data) != n:
        raise DatasetError(f"{path / EVALUATION_FILE} counts {n:,} images of {evaluation['dataset']} "
                           f"but the data given has {len(data):,}; give the set it was made on")
    if evaluation.get("task") == "detection":
        if data is not None and evaluation["examples"]:
            idx = [e["index"] for e in evaluation["examples"]]
            written["detections"] = plot_detections(
                data.images[idx], data.labels[idx], evaluation["examples"], evaluation["classes"],
                path / PLOT_FILES["detections"],
                title=f"{split} set: true boxes (green, dashed) and boxes found (red, score >= 0.5); "
                      f"mAP50 {evaluation['mAP50']:.3f}")
        return written
    written["confusion"] = plot_confusion(
        torch.tensor(evaluation["confusion"]), evaluation["classes"], path / PLOT_FILES["confusion"],
        title=f"Confusion matrix, {split} set ({n:,} images, "
              f"top-1 error {1 - evaluation['top1']:.2%})")
    mistakes = evaluation["mistakes"]
    mistakes_file = path / PLOT_FILES["mistakes"]
    if mistakes and data is not None:
        idx = torch.tensor([m["index"] for m in mistakes])
        maps = ([torch.tensor(m["map"]) for m in mistakes]
                if all("map" in m for m in mistakes) else None)
        where = (f";\nheat: where the evidence for the predicted class lies "
                 f"({_map_method(evaluation['maps'])})" if maps is not None else "")
        images = data.images[idx]
        if maps is not None:  # the maps cover the model's input: its crop or padding
            images = Preprocess.from_dict(meta["preprocess"]).fit(images)
        written["mistakes"] = plot_mistakes(
            images, torch.tensor([m["true"] for m in mistakes]),
            torch.tensor([m["predicted"] for m in mistakes]),
            torch.tensor([m["confidence"] for m in mistakes]), evaluation["classes"],
            mistakes_file,
            title=f"The {len(mistakes)} most confidently wrong {split} images (true -> predicted, "
                  f"confidence){where}", maps=maps)
    elif mistakes_file.exists() and (not mistakes or _older(mistakes_file, path / EVALUATION_FILE)):
        mistakes_file.unlink()  # an earlier evaluation's mistakes no longer apply
    return written


# ------------------------------------------------------------------------------- HTML

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1100px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 28px;
     border-bottom: 1px solid #ddd; padding-bottom: 3px; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card b { display: block; font-size: 20px; } .card span { color: #666; font-size: 12px; }
img { max-width: 100%; border: 1px solid #eee; margin: 6px 0; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.note { color: #666; font-size: 12px; }
"""


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{html.escape(_fmt(v))}</td>'
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv(d: dict) -> str:
    return _table(["setting", "value"], [[k, v] for k, v in d.items()])


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>'


def _environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "processor": platform.machine(),
            "CPU cores": os.cpu_count(), "torch threads": torch.get_num_threads(),
            "CUDA available": torch.cuda.is_available()}


# meta.json's per-epoch fields as the metrics table shows them (header, key)
_EPOCH_COLUMNS = (("epoch", "epoch"), ("loss", "loss"), ("accuracy", "acc"),
                  ("val loss", "val_loss"), ("val accuracy", "val_acc"), ("lr", "lr"),
                  ("seconds", "seconds"))


def _metrics_table(metrics: list[dict]) -> str:
    """One row per epoch. Columns no epoch has a value for (validation, without a
    validation split) are left out, and so are callback extras that repeat a column
    (the schedule puts `lr` on the epoch line too)."""
    score = metrics[-1].get("val_metric", "acc") if metrics else "acc"  # detection: mAP50
    columns = [(f"val {score}" if k == "val_acc" and score != "acc" else h, k)
               for h, k in _EPOCH_COLUMNS if any(m.get(k) is not None for m in metrics)]
    extra = sorted({k for m in metrics for k in m.get("extra", {})} - {k for _, k in _EPOCH_COLUMNS})
    rows = [[m.get(k) for _, k in columns] + [m.get("extra", {}).get(k) for k in extra]
            for m in metrics]
    return _table([h for h, _ in columns] + extra, rows)


def _detection_section(path: Path, evaluation: dict) -> list[str]:
    rows = [[c, a] for c, a in evaluation["ap50"].items()]
    parts = [f"<h2>Evaluation on the {html.escape(evaluation['split'])} set</h2>",
             f"<p>{evaluation['n']:,} images of {html.escape(str(evaluation['dataset']))}: "
             f"mAP50 {evaluation['mAP50']:.4f}, mAP50-95 {evaluation['mAP50_95']:.4f} (COCO), "
             f"loss {evaluation['loss']:.4f}. Numbers are in {EVALUATION_FILE}.</p>",
             _table(["class", "AP50"], rows)]
    if (path / PLOT_FILES["detections"]).exists():
        parts.append(_img(path / PLOT_FILES["detections"], "true and found boxes"))
    return parts


def _evaluation_section(path: Path, evaluation: dict) -> list[str]:
    if evaluation.get("task") == "detection":
        return _detection_section(path, evaluation)
    counts = [sum(r) for r in evaluation["confusion"]]
    rows = [[c, n, None if a != a else a] for (c, a), n in   # NaN: a class without images
            zip(evaluation["per_class"].items(), counts)]
    parts = [f"<h2>Evaluation on the {html.escape(evaluation['split'])} set</h2>",
             f"<p>{evaluation['n']:,} images of {html.escape(str(evaluation['dataset']))}: "
             f"top-1 accuracy {evaluation['top1']:.4f} (error {evaluation['top1_error']:.4f}), "
             f"top-5 accuracy {evaluation['top5']:.4f} (error {evaluation['top5_error']:.4f}), "
             f"loss {evaluation['loss']:.4f}. Counts are in {EVALUATION_FILE}.</p>",
             '<div class="cols"><div>', _table(["class", "images", "accuracy"], rows),
             "</div><div>"]
    if (path / PLOT_FILES["confusion"]).exists():
        parts.append(_img(path / PLOT_FILES["confusion"], "confusion matrix"))
    parts.append("</div></div>")
    if (path / PLOT_FILES["mistakes"]).exists():
        parts += ["<h3>Most confidently wrong</h3>"]
        if evaluation.get("maps"):
            parts.append(f'<p class="note">Beside each image, where the evidence for the class '
                         f"the model predicted lies (red most, blue none): "
                         f"{html.escape(_map_method(evaluation['maps']))}, recorded by the "
                         f"evaluation in {EVALUATION_FILE}.</p>")
        parts.append(_img(path / PLOT_FILES["mistakes"], "most confidently wrong images"))
    return parts


def _summary_cards(evaluation: dict | None, metrics: list[dict], n_params: int) -> str:
    cards = []
    if evaluation and evaluation.get("task") == "detection":
        cards += [_card(f"{evaluation['mAP50']:.3f}", f"mAP50 ({evaluation['split']})"),
                  _card(f"{evaluation['mAP50_95']:.3f}", f"mAP50-95 ({evaluation['split']})")]
    elif evaluation:
        cards += [_card(f"{evaluation['top1_error']:.2%}", f"top-1 error ({evaluation['split']})"),
                  _card(f"{evaluation['top5_error']:.2%}", f"top-5 error ({evaluation['split']})")]
    if metrics:  # only what the run recorded: a features run has no training accuracy
        last = metrics[-1]
        if last.get("acc") is not None:
            cards.append(_card(f"{last['acc']:.2%}", "training accuracy, last epoch"))
        if last.get("val_acc") is not None and last.get("val_metric", "acc") == "acc":
            cards.append(_card(f"{last['val_acc']:.2%}", "validation accuracy, last epoch"))
        elif last.get("val_acc") is not None:
            cards.append(_card(f"{last['val_acc']:.3f}", f"validation {last['val_metric']}, "
                               f"last epoch"))
        cards.append(_card(f"{len(metrics)}", "epochs"))
        seconds = [m["seconds"] for m in metrics if m.get("seconds") is not None]
        if seconds:
            cards.append(_card(f"{sum(seconds):.0f} s", "training time"))
    cards.append(_card(f"{n_params:,}", "parameters"))
    return f'<div class="cards">{"".join(cards)}</div>'


def _plots_stale(path: Path) -> bool:
    """A plot is missing or older than what it is drawn from."""
    if _older(path / PLOT_FILES["history"], path / META_FILE):
        return True
    evaluation = path / EVALUATION_FILE
    return evaluation.exists() and _older(path / PLOT_FILES["confusion"], evaluation)


def write_report(run_dir: str | os.PathLike, *, data: ImageSet | None = None,
                 device: str | torch.device = "cpu", refresh: bool = False) -> Path:
    """Write RUN/report.html: summary, curves, per-epoch metrics, per-class accuracy,
    confusion matrix, most confidently wrong images, configuration and environment.

    The evaluation is read from RUN/evaluation.json, which this does not make (see
    convlab.training.evaluation.evaluate_run; `convlab report` runs it first when missing
    or stale). The plots are (re)drawn when missing, older than meta.json or
    evaluation.json, or with `refresh`; `data` is passed on to write_run_plots() for
    the mistakes grid. `device` is where the model is loaded to count its parameters.
    """
    run = load_run(run_dir, device)
    path, meta = run.path, run.meta
    if refresh or _plots_stale(path):
        write_run_plots(path, data=data)
    evaluation = read_evaluation(path)
    metrics = meta.get("metrics", [])
    model = meta.get("model", {})
    dataset = meta.get("dataset", {})
    n_params = sum(p.numel() for p in run.model.parameters())
    title = f"{model.get('name', '?')} on {dataset.get('name', '?')}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="sub">run {html.escape(str(path.resolve()))} &middot; report written '
             f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>"]
    parts.append(_summary_cards(evaluation, metrics, n_params))
    if (path / PLOT_FILES["history"]).exists():
        parts += ["<h2>Training curves</h2>", _img(path / PLOT_FILES["history"], "loss, accuracy "
                                                   "and learning rate by epoch")]
    if metrics:
        parts += ["<h2>Metrics by epoch</h2>", _metrics_table(metrics)]
    if evaluation:
        parts += _evaluation_section(path, evaluation)
    else:
        parts.append(f'<p class="note">No evaluation ({EVALUATION_FILE} is missing): the run\'s '
                     "data could not be found again (trained on images held in memory), or the "
                     "run was not evaluated yet (<code>convlab report</code> evaluates first).</p>")
    parts += ["<h2>Configuration</h2>", '<div class="cols"><div><h3>Training</h3>',
              _kv(meta.get("train", {})), "</div><div><h3>Model</h3>",
              _kv({"name": model.get("name"), **model.get("kwargs", {}), "parameters": n_params}),
              "<h3>Data</h3>", _kv(dataset), "<h3>Preprocessing</h3>", _kv(meta.get("preprocess", {})),
              "</div></div>",
              "<h2>Environment</h2>", '<div class="cols"><div><h3>Trained with</h3>',
              _kv(meta.get("versions", {})), "</div><div><h3>This report made on</h3>",
              _kv(_environment()), "</div></div>"]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)} - convlab report</title><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
    atomic_write_bytes(path / REPORT_FILE, page.encode("utf-8"))
    return path / REPORT_FILE
