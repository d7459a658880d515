"""The README a newcomer reads: short, starting with the two commands, linking every docs page; the benchmark
tables in the docs are the ones the benchmark wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MAX_README_LINES = 200


def test_the_readme_is_short_starts_with_the_two_commands_and_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES, f"README has {len(text.splitlines())} lines"
    commands = re.findall(r"^make (\w+)", text.split("```")[1], flags=re.MULTILINE)
    assert commands == ["demo", "test"], f"the README's first code block runs {commands}"
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", text))
    missing = [str(p.relative_to(REPO)) for p in sorted((REPO / "docs").glob("*.md"))
               if str(p.relative_to(REPO)) not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"
    for folder, page in [(README.parent, README), *((REPO / "docs", p) for p in (REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (folder / target).exists(), f"{page.name} links {target}, which does not exist"


def test_the_lifelong_tables_in_the_docs_are_the_benchmarks_own():
    """Every table row that names a lifelong method is a row the benchmark wrote into bench/results."""
    results = json.loads((REPO / "bench" / "results" / "lifelong.json").read_text())
    methods = {m for track in results["tracks"].values() for m in track["methods"]}
    written = {line.strip() for md in (REPO / "bench" / "results").glob("*.md") for line in md.read_text().splitlines()}
    pages = [README, *(REPO / "docs").glob("*.md")]
    rows = [(page.name, line.strip()) for page in pages for line in page.read_text().splitlines()
            if line.startswith("|") and line.split("|")[1].strip() in methods]
    assert rows, "no lifelong table in the docs"
    stale = [f"{name}: {row[:80]}" for name, row in rows if row not in written]
    assert not stale, f"table rows that bench/results does not hold (re-run the benchmark or copy its table): {stale}"
