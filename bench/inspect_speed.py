"""How long `convlab inspect resnet50` (3x224x224) takes; the target is under 2 seconds.

Measured in one process after the imports: convlab.analysis.model_stats (build on the
meta device + one hooked forward with the depth tracker), best of --rounds. The
reference, measured in the same run the same way, is torch.utils.flop_counter's
FlopCounterMode over the same meta-device model (what fvcore/ptflops-style tools do,
without units, connections or per-layer records); `ratio` = inspect / reference.
Also the wall and CPU time of the whole CLI command in a fresh process (imports included;
the CPU time is the fairer figure on a loaded machine).
Prints one JSON line.

    .venv/bin/python bench/inspect_speed.py [--model resnet50] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from convlab.analysis import model_stats
    from convlab.models import create_model

    def ours() -> None:
        model_stats(args.model)

    def reference() -> None:
        with torch.device("meta"):
            model = create_model(args.model, 1000).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.empty(1, 3, 224, 224, device="meta"))

    ours(), reference()  # warm-up: lazy imports, first-call dispatch
    best = {"inspect": float("inf"), "reference": float("inf")}
    for _ in range(args.rounds):
        for name, fn in (("inspect", ours), ("reference", reference)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "convlab", "inspect", args.model, "--format", "json"],
                   check=True, stdout=subprocess.DEVNULL)
    cli = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cli_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(json.dumps({
        "bench": "inspect_speed", "model": args.model, "input": "3x224x224",
        "inspect_s": round(best["inspect"], 3), "target_s": 2.0,
        "reference": "torch.utils.flop_counter on the same meta-device model",
        "reference_s": round(best["reference"], 3),
        "ratio": round(best["inspect"] / best["reference"], 2),
        "cli_wall_s_with_imports": round(cli, 2), "cli_cpu_s_with_imports": round(cli_cpu, 2),
        "load_average_1min": round(os.getloadavg()[0], 1), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
