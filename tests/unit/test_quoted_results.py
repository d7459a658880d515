"""Every measured number the README and docs/ quote from a result file is the number that file holds today.

`docs/quoted-results.json` lists each quote: the page, the sentence fragment with `{name:format}` fields, and per
field an expression over the result files (`at(file, path)`, `path` dotted, `*` matching any key). The test
formats the fragment from the files and finds it on the page, so a re-run benchmark whose numbers moved, or a
page edited by hand, fails here until the two agree again. The README's status table is held to more: every
number in it is part of a quote (or of a listed fact that no result file holds).
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
QUOTES = REPO / "docs" / "quoted-results.json"
RESULTS = REPO / "bench" / "results"
NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?")


@cache
def result_file(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def at(name: str, path: str) -> Any:
    """The value at a dotted `path` of a result file; with `*` in a segment, the list of every match."""
    nodes: list[Any] = [result_file(name)]
    for segment in path.split("."):
        step = []
        for node in nodes:
            if isinstance(node, list):
                node = dict(enumerate(node))
            step.extend(v for k, v in node.items() if fnmatch.fnmatchcase(str(k), segment))
        if not step:
            raise KeyError(f"{name}: nothing at {path!r} (segment {segment!r})")
        nodes = step
    return nodes if "*" in path else nodes[0]


def flat(text: str) -> str:
    """Markdown as read: line breaks are spaces, runs of spaces one."""
    return re.sub(r"\s+", " ", text)


def quoted(entry: dict[str, Any]) -> str:
    values = {k: eval(expr, {"at": at, "max": max, "min": min, "len": len}) for k, expr in entry["values"].items()}
    return entry["text"].format(**values)


def entries() -> list[dict[str, Any]]:
    return json.loads(QUOTES.read_text())["quotes"]


@pytest.mark.parametrize("entry", entries(), ids=lambda e: f"{e['page']}:{e['text'][:40]}")
def test_each_quoted_number_is_the_one_its_result_file_holds(entry: dict[str, Any]):
    text = quoted(entry)
    page = flat((REPO / entry["page"]).read_text())
    assert text in page, (f"{entry['page']} should say {text!r} (from {entry['values']}); re-run the benchmark or "
                          "copy its numbers into the page")


def test_every_number_in_the_readme_status_table_is_quoted_from_a_result_or_listed_as_a_fact():
    readme = (REPO / "README.md").read_text()
    status = readme.split("## Status", 1)[1].split("\n## ", 1)[0]
    rows = [flat(line) for line in status.splitlines() if line.startswith("| ") and "---" not in line][1:]
    covered = [quoted(e) for e in entries() if e["page"] == "README.md"] + json.loads(QUOTES.read_text())["facts"]
    loose = []
    for row in rows:
        state = row.rstrip(" |").rsplit(" | ", 1)[1]
        spans = [(m.start(), m.end()) for c in covered for m in re.finditer(re.escape(c), state)]
        loose += [f"{n.group()} in {state[max(0, n.start() - 30):n.end() + 10]!r}" for n in NUMBER.finditer(state)
                  if not any(a <= n.start() and n.end() <= b for a, b in spans)]
    assert not loose, f"numbers in the README's status table that no quote or fact covers: {loose}"


def test_the_checker_catches_a_number_that_moved(tmp_path, monkeypatch):
    """A quote whose file changed no longer formats to the page's text."""
    entry = {"page": "README.md", "text": "IA {ia:.1f}", "values": {"ia": "at('x.json', 'methods.*.ia')[0]"}}
    (tmp_path / "x.json").write_text(json.dumps({"methods": {"r2moe": {"ia": 38.36}}}))
    monkeypatch.setattr(sys.modules[__name__], "RESULTS", tmp_path)
    result_file.cache_clear()
    try:
        assert quoted(entry) == "IA 38.4"
        (tmp_path / "x.json").write_text(json.dumps({"methods": {"r2moe": {"ia": 39.0}}}))
        result_file.cache_clear()
        assert quoted(entry) == "IA 39.0"
    finally:
        result_file.cache_clear()
