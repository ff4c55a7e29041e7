"""The generated pages (docs/cli.md, docs/benchmarks.md) are current, the generators do
what the pages say, and every link between the pages points somewhere."""
from __future__ import annotations

import argparse
import datetime as dt
import difflib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_current(path: Path, expected: str, command: str) -> None:
    actual = path.read_text() if path.exists() else ""
    if actual != expected:
        diff = "".join(list(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True),
                                                 str(path.relative_to(ROOT)), "regenerated"))[:60])
        pytest.fail(f"{path.relative_to(ROOT)} is stale: run `{command}`\n{diff}", pytrace=False)


def test_cli_page_is_current(gen_docs):
    _assert_current(ROOT / "docs" / "cli.md", gen_docs.render_cli(), "python tools/gen_docs.py cli")


def test_benchmarks_page_is_current(gen_docs):
    _assert_current(ROOT / "docs" / "benchmarks.md", gen_docs.render_benchmarks(),
                    "python tools/gen_docs.py benchmarks")


def test_cli_page_has_every_command_and_option(gen_docs):
    from convlab.cli import build_parser

    page = gen_docs.render_cli()
    parser = build_parser()
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0].choices
    assert len(commands) >= 10
    for name, sub in commands.items():
        assert f"\n## convlab {name}\n" in page
        section = page.split(f"\n## convlab {name}\n", 1)[1].split("\n## convlab ", 1)[0]
        for action in sub._actions:
            if action.help is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert option in section, f"{option} of `convlab {name}` missing from its section"


def test_benchmarks_page_shows_the_newest_record_and_the_unrecorded(gen_docs):
    machine = {"platform": "Linux-test", "cpus": 2, "cpu_model": "Test CPU @ 1GHz"}
    records = [
        {"date": "2030-01-01T10:00:00Z", "script": "bench/a.py", "args": [], "machine": machine,
         "result": {"bench": "a", "ratio": 1.25, "images_per_s": 10.5}},
        {"date": "2030-01-02T10:00:00Z", "script": "bench/a.py", "args": ["--rounds", "1"],
         "machine": machine, "result": {"bench": "a", "ratio": 2.5, "images_per_s": 20.0,
                                        "samples": {"one": [1.5, 2]},
                                        "results": {"10": {"knn": {"acc": 0.72, "ratio_to_ref": 0.98},
                                                           "scratch": {"acc": 0.7319}}}}},
    ]
    page = gen_docs.render_benchmarks(records, ["bench/a.py", "bench/b.py"])
    a = page.split("\n## a\n", 1)[1].split("\n## ", 1)[0]
    assert "| ratio | 2.5x |" in a and "1.25x" not in page   # ratios as ratios, newest only
    assert "| images_per_s | 20.0 |" in a and "| samples.one | 1.5, 2 |" in a
    assert "|  | acc | ratio_to_ref |" in a            # a nested result is a grid
    assert "| 10 / knn | 0.72 | 0.98x |" in a and "| 10 / scratch | 0.7319 |  |" in a
    assert "2030-01-02 10:00:00 UTC" in a and "python bench/a.py --rounds 1" in a
    assert "Linux-test, 2 CPUs, Test CPU @ 1GHz" in a
    b = page.split("\n## b\n", 1)[1]
    assert "not yet recorded; run `make bench BENCH=bench/b.py`" in b and "|" not in b
    assert "| [b](#b) | not yet recorded | |" in page


def test_record_appends_the_last_json_line_with_date_and_machine(gen_docs, tmp_path):
    script = tmp_path / "fake_bench.py"
    script.write_text("import json, sys\n"
                      "print('warming up')\n"
                      "print(json.dumps({'bench': 'fake', 'ratio': 1.0}))\n"
                      "print(json.dumps({'bench': 'fake', 'ratio': 1.5, 'args': sys.argv[1:]}))\n")
    results = tmp_path / "results.jsonl"
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    gen_docs.record(script, ["--rounds", "1"], results)
    gen_docs.record(script, [], results)
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["result"] == {"bench": "fake", "ratio": 1.5, "args": ["--rounds", "1"]}
    assert first["args"] == ["--rounds", "1"] and first["script"].endswith("fake_bench.py")
    assert dt.datetime.strptime(first["date"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.timezone.utc) >= before
    assert first["machine"]["cpus"] == os.cpu_count() and first["machine"]["cpu_model"]
    assert first["machine"]["platform"]


@pytest.mark.parametrize("body, message", [
    ("print('no json here')", "printed no JSON line"),
    ("import sys; print('{\"bench\": \"x\"}'); sys.exit(3)", "exited with code 3"),
])
def test_record_appends_nothing_when_a_benchmark_fails(gen_docs, tmp_path, body, message):
    script = tmp_path / "bad_bench.py"
    script.write_text(body + "\n")
    results = tmp_path / "results.jsonl"
    with pytest.raises(SystemExit, match=message):
        gen_docs.record(script, [], results)
    assert not results.exists()


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_links_between_pages_resolve():
    anchors = {p.resolve(): {_slug(h) for h in re.findall(r"^#+ (.+)$", p.read_text(), re.M)}
               for p in _pages()}
    broken = []
    for page in _pages():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page.resolve()
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest in anchors and anchor not in anchors[dest]:
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short_and_each_capability_has_a_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    for name in ("training", "inspect", "transfer", "craft", "teach", "scaling", "cli",
                 "benchmarks"):
        assert (ROOT / "docs" / f"{name}.md").exists(), f"docs/{name}.md is missing"
