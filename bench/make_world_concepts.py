"""Regenerate the shipped concept sets bench/world/concepts_10.json, concepts_30.json and the held-out set
concepts_heldout_8.json (deterministic)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # r2moe_core, which the world package imports

from world.concepts import write_default_sets

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write_default_sets(Path(__file__).resolve().parent / "world"):
        logging.getLogger("r2moe.bench").info("wrote %s", path)
