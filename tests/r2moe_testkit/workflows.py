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


def training_graph(checkpoint: str, folder: str, save_as: str, **train: Any) -> dict[str, Any]:
    """Checkpoint -> New Bank -> Train Concept (a mug from `folder`, short and small) -> Save Bank, in API format;
    `train` overrides the training node's inputs."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "R2MoENewBank", "inputs": {"model": ["1", 0], "rank": 4, "top_k": 3,
                                                       "prune_threshold": 0.4, "distill_lambda": 1e-05}},
        "3": {"class_type": "R2MoETrainConcept", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "bank": ["2", 0], "concept_name": "mug",
            "trigger_token": "<mug1>", "class_word": "mug", "folder": folder, "steps": 3, "batch_size": 2,
            "resolution": 64, "lr_experts": 1e-3, "lr_router": 1e-3, "lr_token": 1e-3, "distill_lambda": 1e-05,
            "distill_mode": "exact", "prune_threshold": 0.4, "seed": 0, "optimizer": "AdamW", **train}},
        "4": {"class_type": "R2MoESaveBank", "inputs": {"bank": ["3", 0], "name": save_as}},
    }
