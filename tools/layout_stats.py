"""Layout figures of src/convlab: modules, lines, longest functions and import cycles.

Imports are read from the source (every import statement, including those inside
functions), resolved to convlab modules, and the cycles counted as the strongly
connected components of that graph. Run: python tools/layout_stats.py [--json]
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "convlab"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[:len(base) - node.level + 1]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def function_lengths(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [(n.end_lineno - n.lineno + 1, n.name) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def main() -> None:
    mods = modules()
    graph = {m: imports_of(m, p, set(mods)) for m, p in mods.items()}
    # a package's __init__ importing its own submodules is not a cycle by itself
    sccs = cycles(graph)
    lines = sum(len(p.read_text().splitlines()) for p in mods.values())
    funcs = sorted(((n, f"{m}.{f}") for m, p in mods.items() for n, f in function_lengths(p)),
                   reverse=True)
    pairs = sum(1 for a in graph for b in graph[a] if any(a in c and b in c for c in sccs))
    stats = {"modules": len(mods), "lines": lines, "cycles": len(sccs),
             "modules_on_cycles": sum(len(c) for c in sccs), "edges_on_cycles": pairs,
             "longest_functions": [[n, f] for n, f in funcs[:8]],
             "functions_over_60_lines": sum(1 for n, _ in funcs if n > 60)}
    if "--json" in sys.argv:
        print(json.dumps(stats))
        return
    for k, v in stats.items():
        if k != "longest_functions":
            print(f"{k}: {v}")
    print("longest functions:")
    for n, f in funcs[:8]:
        print(f"  {n:4d}  {f}")
    for c in sccs:
        print("cycle:", " ".join(c))


if __name__ == "__main__":
    main()
