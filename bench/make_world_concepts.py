"""Regenerate the shipped concept sets bench/world/concepts_10.json and concepts_30.json (deterministic)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from world.concepts import write_default_sets

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write_default_sets(Path(__file__).resolve().parent / "world"):
        logging.getLogger("r2moe.bench").info("wrote %s", path)
