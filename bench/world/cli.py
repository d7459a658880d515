"""The options every benchmark on the world model takes, in one place."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .checkpoint import SHIPPED

WORLD = Path(__file__).resolve().parent
LOG = logging.getLogger("r2moe.bench")
Row = TypeVar("Row", bound=tuple)


def world_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with `--checkpoint` (the world model) and `--concepts` (the concept file), shown with `doc`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--concepts", type=Path, default=WORLD / "concepts_10.json")
    return parser


def rows_named(rows: Sequence[Row], names: str) -> list[Row]:
    """The rows whose first field is named in `names` (';'-separated), the first row (the yardstick the others
    are read against) always first; every row where `names` is empty."""
    if not names:
        return list(rows)
    known = {row[0]: row for row in rows}
    wanted = [n.strip() for n in names.split(";") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; choose from: {'; '.join(known)}")
    return [rows[0]] + [known[n] for n in wanted if n != rows[0][0]]


def write_result(out: Path, name: str, results: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> None:
    """`name`.json and its table `name`.md in `out`; the table goes to the log too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(results) + "\n")
    LOG.info("%s", markdown(results))
