"""The architecture as a checked contract: no import cycles, a CLI that does not import
torch for its cheap commands, and an `import convlab` without process-wide effects.
(The layers themselves are checked by `lint-imports` in `make test`.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import layout_stats  # noqa: E402


def test_no_module_of_convlab_sits_on_an_import_cycle():
    mods = layout_stats.modules()
    graph = {m: layout_stats.imports_of(m, p, set(mods)) for m, p in mods.items()}
    assert layout_stats.cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    """The check above would fail on a cycle (one inside a function counts too)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert layout_stats.cycles(graph) == [["a", "b", "c"]]
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    from . import y\n")
    known = {"pkg", "pkg.x", "pkg.y"}
    assert layout_stats.imports_of("pkg.x", pkg / "x.py", known) == {"pkg.y"}


def _imported(*code_or_args: str) -> set[str]:
    """Top-level packages a fresh interpreter imported (python -X importtime ...)."""
    out = subprocess.run([sys.executable, "-X", "importtime", *code_or_args],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    names = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["datasets"], ["recipes"]])
def test_cheap_commands_do_not_import_torch(args):
    names = _imported("-m", "convlab", *args)
    assert "convlab" in names and "torch" not in names


def test_importing_convlab_changes_nothing_in_the_process():
    code = ("import sys, warnings, os; before = list(warnings.filters); import convlab; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert warnings.filters == before, 'warnings filters changed'; "
            "import convlab._runtime as r; assert not r._done, 'malloc tuned on import'; "
            "assert callable(convlab.fit) and 'torch' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_public_api_resolves():
    import convlab

    for name in convlab.__all__:
        value = getattr(convlab, name)
        assert name == "__version__" or callable(value), name  # functions and classes
    import convlab.training  # noqa: F401  (the package is named apart from the function)
    assert callable(convlab.train) and convlab.train.__module__ == "convlab.training.run"
