"""`convlab report`: a run's self-contained HTML report."""
from __future__ import annotations

import argparse

__all__ = ["register"]


def cmd_report(args: argparse.Namespace) -> int:
    from ..figures.report import write_report
    from ..training import resolve_device
    from ..training.evaluation import evaluate_run, evaluation_stale

    device = resolve_device(args.device)
    evaluation = None
    if args.refresh or evaluation_stale(args.run_dir):  # the report only reads evaluation.json
        evaluation = evaluate_run(args.run_dir, device=device)
    path = write_report(args.run_dir, data=evaluation.data if evaluation else None,
                        device=device, refresh=args.refresh)
    print(f"report written to {path} ({path.stat().st_size / 1024:,.0f} KiB, self-contained)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN/report.html: config, metrics, plots, environment",
                       description="Write a self-contained HTML report of a run directory (plots "
                       "embedded, no links out): training curves, per-epoch metrics, per-class "
                       "accuracy, confusion matrix, most confidently wrong images, configuration, "
                       "environment. Evaluates the run and makes the plots first when they are "
                       "missing or stale.")
    p.add_argument("run_dir", metavar="RUN", help="run directory")
    p.add_argument("--refresh", action="store_true",
                   help="evaluate again and remake the plots even when up to date")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.set_defaults(run=cmd_report)
