"""The pack's node ids read from its source, so tiers without ComfyUI in the process can check every node."""

from __future__ import annotations

import ast
from pathlib import Path

NODES_DIR = Path(__file__).resolve().parents[2] / "nodes"


def pack_node_ids() -> set[str]:
    """Every `node_id="..."` given to an `io.Schema(...)` in nodes/*.py."""
    ids = set()
    for path in sorted(NODES_DIR.glob("*.py")):
        for call in ast.walk(ast.parse(path.read_text())):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "Schema":
                ids.update(
                    kw.value.value for kw in call.keywords if kw.arg == "node_id" and isinstance(kw.value, ast.Constant)
                )
    return ids
