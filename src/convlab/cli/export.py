"""`convlab export`: a run as ONNX or TorchScript, parity-checked against torch."""
from __future__ import annotations

import argparse
import time

from ..config import EXPORT_FORMATS

__all__ = ["register"]


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_run

    t0 = time.perf_counter()
    r = export_run(args.run_dir, args.format, out=args.out)
    print(f"wrote {r.path} ({r.bytes / 1e6:.1f} MB, {args.format}) in {time.perf_counter() - t0:.1f}s; "
          f"parity with torch: max abs difference {r.max_abs_diff:.1e} in probabilities "
          f"({r.max_logit_diff:.1e} in logits), same top-1: {'yes' if r.same_top1 else 'no'}")
    if args.format == "onnx":
        print(f"predict with ONNX Runtime: convlab predict {args.run_dir} IMAGE... --backend onnx")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run as ONNX or TorchScript, checked against torch",
                       description="Export a run's model with its classes and preprocessing inside; "
                       "a parity check against eager torch (max abs difference < 1e-4, same top-1) "
                       "runs first and nothing is written if it fails.")
    p.add_argument("run_dir", metavar="run", help="run directory")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--out", help="output file (default RUN/model.onnx or RUN/model.torchscript.pt)")
    p.set_defaults(run=cmd_export)
