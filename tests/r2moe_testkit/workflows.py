"""The shipped example workflows, loaded and adapted for tests."""

from __future__ import annotations

import copy
import json
from typing import Any

from comfy_inprocess import REPO


def load_api_workflow(name: str) -> dict[str, Any]:
    return json.loads((REPO / "scripts" / "api_workflows" / name).read_text())


def with_steps(graph: dict[str, Any], steps: int, size: int = 128) -> dict[str, Any]:
    """Shorter, smaller sampling for tests; everything else as shipped."""
    graph = copy.deepcopy(graph)
    for node in graph.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = steps
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=size, height=size)
    return graph
