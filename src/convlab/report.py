"""Per-run plots and the HTML report of a run directory.

write_run_plots() adds to a run: history.png (loss, accuracy, learning rate by epoch,
from meta.json's metrics), confusion.json (top-1/top-5 error, per-class accuracy and
the confusion counts of evaluate()), confusion.png and mistakes.png (the most
confidently wrong images), on the run's test split, else its validation split.
write_report() puts these with the configuration and the environment into one
self-contained report.html: images inlined as data URIs, inline CSS, no scripts, no
links out, so it opens offline and can be mailed as one file.
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

from .checkpoint import META_FILE, Run, load_run
from .config import TrainConfig
from .data import ImageSet, dataset_spec, list_datasets, load_dataset
from .files import atomic_write_bytes
from .errors import ConvlabError

__all__ = ["evaluation_data", "write_run_plots", "write_report", "PLOT_FILES", "REPORT_FILE"]

REPORT_FILE = "report.html"
CONFUSION_JSON = "confusion.json"
PLOT_FILES = {"history": "history.png", "confusion": "confusion.png", "mistakes": "mistakes.png"}


def evaluation_data(run: Run) -> tuple[ImageSet, str]:
    """(images, split name) to evaluate a run on: the dataset's test split when it has
    one, else the run's own validation split (the same seed and fraction as in training),
    else its training data. Raises a ConvlabError when the data cannot be found again."""
    from .train.run import prepare_data

    name = run.meta.get("dataset", {}).get("name")
    if not name:
        raise ConvlabError(f"{run.path}: the run does not name its dataset")
    pre = run.preprocess
    known = name in list_datasets()
    if known and "test" in dataset_spec(name).sizes:
        return load_dataset(name, "test", channels=pre.channels), "test"
    cfg = TrainConfig.from_dict(run.meta.get("train", {}))
    train, val, _ = prepare_data(name, cfg, channels=pre.channels,
                                 size=None if known else pre.size[0])
    return (val, "validation") if val is not None and len(val) else (train, "training")


def write_run_plots(run_dir: str | os.PathLike, *, data: ImageSet | None = None,
                    split: str = "", device: str | torch.device = "cpu",
                    mistakes: int = 24) -> dict[str, Path]:
    """Write history.png, confusion.json, confusion.png and mistakes.png into a run.

    `data` is the set to evaluate on (default: evaluation_data()). When the data
    cannot be found again (a run trained on an in-memory ImageSet), only history.png
    is written. Returns the files written, by name.
    """
    from .plots import confident_mistakes, plot_confusion, plot_history, plot_mistakes
    from .train.metrics import evaluate, predict_logits

    run = load_run(run_dir, device)
    path = run.path
    written: dict[str, Path] = {}
    metrics = run.meta.get("metrics", [])
    model_name = run.meta.get("model", {}).get("name", "")
    if metrics:
        written["history"] = plot_history(metrics, path / PLOT_FILES["history"],
                                          title=f"{model_name} on {run.meta['dataset']['name']}")
    if data is None:
        try:
            data, split = evaluation_data(run)
        except ConvlabError:
            return written
    split = split or "evaluation"
    result = evaluate(run.model, data, run.preprocess, device=device)
    info = {"dataset": data.name, "split": split, **result.to_dict()}
    text = json.dumps({**info, "confusion": None}, indent=2)  # one matrix row per line:
    rows = ",\n    ".join(json.dumps(r) for r in info["confusion"])
    text = text.replace('"confusion": null', f'"confusion": [\n    {rows}\n  ]')
    atomic_write_bytes(path / CONFUSION_JSON, text.encode())
    written["confusion.json"] = path / CONFUSION_JSON
    written["confusion"] = plot_confusion(
        result.confusion, result.classes, path / PLOT_FILES["confusion"],
        title=f"Confusion matrix, {split} set ({result.n:,} images, "
              f"top-1 error {1 - result.top1:.2%})")
    logits = predict_logits(run.model, data, run.preprocess, device=device)
    idx, pred, conf = confident_mistakes(logits, data.labels, mistakes)
    mistakes_file = path / PLOT_FILES["mistakes"]
    if len(idx):
        written["mistakes"] = plot_mistakes(
            data.images[idx], data.labels[idx], pred, conf, result.classes, mistakes_file,
            title=f"The {len(idx)} most confidently wrong {split} images (true -> predicted, "
                  f"confidence)")
    elif mistakes_file.exists():
        mistakes_file.unlink()  # an earlier epoch's mistakes no longer apply
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


def write_report(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                 refresh: bool = False) -> Path:
    """Write RUN/report.html: summary, curves, per-epoch metrics, per-class accuracy,
    confusion matrix, most confidently wrong images, configuration and environment.

    The plots are (re)made when missing, older than meta.json, or with `refresh`.
    """
    run = load_run(run_dir, device)
    path, meta = run.path, run.meta
    stale = [p for p in (PLOT_FILES["history"], CONFUSION_JSON) if not (path / p).exists()
             or (path / p).stat().st_mtime < (path / META_FILE).stat().st_mtime]
    if refresh or stale:
        write_run_plots(path, device=device)
    evaluation = (json.loads((path / CONFUSION_JSON).read_text())
                  if (path / CONFUSION_JSON).exists() else None)
    metrics = meta.get("metrics", [])
    model = meta.get("model", {})
    dataset = meta.get("dataset", {})
    n_params = sum(p.numel() for p in run.model.parameters())
    title = f"{model.get('name', '?')} on {dataset.get('name', '?')}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="sub">run {html.escape(str(path.resolve()))} &middot; report written '
             f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>"]
    cards = []
    if evaluation:
        cards += [_card(f"{evaluation['top1_error']:.2%}", f"top-1 error ({evaluation['split']})"),
                  _card(f"{evaluation['top5_error']:.2%}", f"top-5 error ({evaluation['split']})")]
    if metrics:
        last = metrics[-1]
        cards.append(_card(f"{last['acc']:.2%}", "training accuracy, last epoch"))
        if last.get("val_acc") is not None:
            cards.append(_card(f"{last['val_acc']:.2%}", "validation accuracy, last epoch"))
        cards.append(_card(f"{len(metrics)}", "epochs"))
        cards.append(_card(f"{sum(m['seconds'] for m in metrics):.0f} s", "training time"))
    cards.append(_card(f"{n_params:,}", "parameters"))
    parts.append(f'<div class="cards">{"".join(cards)}</div>')
    if (path / PLOT_FILES["history"]).exists():
        parts += ["<h2>Training curves</h2>", _img(path / PLOT_FILES["history"], "loss, accuracy "
                                                   "and learning rate by epoch")]
    if metrics:
        extra = sorted({k for m in metrics for k in m.get("extra", {})})
        rows = [[m["epoch"], m["loss"], m["acc"], m.get("val_loss"), m.get("val_acc"), m["lr"],
                 m["seconds"]] + [m.get("extra", {}).get(k) for k in extra] for m in metrics]
        parts += ["<h2>Metrics by epoch</h2>",
                  _table(["epoch", "loss", "accuracy", "val loss", "val accuracy", "lr",
                          "seconds"] + extra, rows)]
    if evaluation:
        counts = [sum(r) for r in evaluation["confusion"]]
        rows = [[c, n, None if a != a else a] for (c, a), n in
                zip(evaluation["per_class"].items(), counts)]
        parts += [f"<h2>Evaluation on the {html.escape(evaluation['split'])} set</h2>",
                  f"<p>{evaluation['n']:,} images of {html.escape(str(evaluation['dataset']))}: "
                  f"top-1 accuracy {evaluation['top1']:.4f} (error {evaluation['top1_error']:.4f}), "
                  f"top-5 accuracy {evaluation['top5']:.4f} (error {evaluation['top5_error']:.4f}), "
                  f"loss {evaluation['loss']:.4f}. Counts are in {CONFUSION_JSON}.</p>",
                  '<div class="cols"><div>', _table(["class", "images", "accuracy"], rows),
                  "</div><div>"]
        if (path / PLOT_FILES["confusion"]).exists():
            parts.append(_img(path / PLOT_FILES["confusion"], "confusion matrix"))
        parts.append("</div></div>")
        if (path / PLOT_FILES["mistakes"]).exists():
            parts += ["<h3>Most confidently wrong</h3>",
                      _img(path / PLOT_FILES["mistakes"], "most confidently wrong images")]
    else:
        parts.append('<p class="note">No evaluation: the run\'s data could not be found again '
                     "(trained on images held in memory).</p>")
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
