"""The options every benchmark on the world model takes, in one place."""

from __future__ import annotations

import argparse
from pathlib import Path

from .checkpoint import SHIPPED

WORLD = Path(__file__).resolve().parent


def world_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with `--checkpoint` (the world model) and `--concepts` (the concept file), shown with `doc`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--concepts", type=Path, default=WORLD / "concepts_10.json")
    return parser
