"""Rendering rows as a text table, Markdown, CSV or JSON (computation stays elsewhere)."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

__all__ = ["render_table", "FORMATS"]

FORMATS = ("table", "markdown", "csv", "json")


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def render_table(headers: Sequence[str], rows: Sequence[Sequence], fmt: str = "table",
                 right: Sequence[bool] | None = None) -> str:
    """Rows under headers. Numbers get thousands separators in 'table'/'markdown' and
    stay raw in 'csv'/'json'. `right` marks right-aligned columns (default: numeric)."""
    if fmt == "json":
        return json.dumps([dict(zip(headers, r)) for r in rows], indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(headers)
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in r] for r in rows]
    if right is None:
        right = [bool(rows) and all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool)
                                    for r in rows if r[i] is not None) for i in range(len(headers))]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return ("| " + " | ".join(parts) + " |") if fmt == "markdown" else "  ".join(parts).rstrip()
    out = [line(list(headers))]
    if fmt == "markdown":
        out.append("|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2))
                                  for w, r in zip(widths, right)) + "|")
    else:
        out.append("  ".join("-" * w for w in widths))
    out += [line(c) for c in cells]
    return "\n".join(out)
