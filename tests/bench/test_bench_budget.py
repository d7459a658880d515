"""The budget check: its step hook leaves training as it was, and its plateau verdict reads the held-out curve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from budget import PLATEAU, verdict
from world.checkpoint import SHIPPED, load_world
from world.concepts import load_concepts
from world.methods import Budget, make_method
from world.protocol import ConceptData, World, train_task

REPO = Path(__file__).resolve().parents[2]


def test_the_step_hook_sees_every_step_and_changes_nothing() -> None:
    world = World(*load_world(SHIPPED))
    spec = load_concepts(REPO / "bench" / "world" / "concepts_10.json")[0]
    concept = ConceptData.from_spec(spec, 2)
    seen: list[int] = []

    def hook(step, delta, encode) -> None:
        seen.append(step)
        with torch.no_grad():
            encode(["photo of a toy"])  # reading the model through the task must not move its state

    plain = train_task(world, make_method("textual_inversion", world.unet, Budget(steps=3), 0), concept, 3, 7)[1]
    hooked = train_task(world, make_method("textual_inversion", world.unet, Budget(steps=3), 0), concept, 3, 7,
                        on_step=hook)[1]
    assert seen == [0, 1, 2, 3]
    assert plain == hooked


def _points(values: dict[int, float]) -> list[dict]:
    return [{"step": s, "held_out": v, "per_image": [v, v + 0.001, v - 0.001]} for s, v in values.items()]


def test_plateau_means_doubling_the_budget_gains_less_than_the_threshold() -> None:
    still_falling = verdict(_points({0: 0.06, 50: 0.03, 100: 0.03 * (1 - 2 * PLATEAU)}), 50)
    flat = verdict(_points({0: 0.06, 50: 0.03, 100: 0.03 * (1 - PLATEAU / 2)}), 50)
    assert not still_falling["plateau"] and flat["plateau"]
    assert 0.0 < still_falling["share_of_drop_done"] < 1.0
    assert verdict(_points({0: 0.06, 50: 0.03}), 50) == {}  # no reading at twice the budget: no verdict


def test_a_short_run_writes_its_table(tmp_path) -> None:
    subprocess.run([sys.executable, str(REPO / "bench" / "budget.py"), "--methods", "textual_inversion",
                    "--budget", "2", "--every", "2", "--out", str(tmp_path)], check=True, timeout=600)
    results = json.loads((tmp_path / "budget.json").read_text())
    curve = results["methods"]["textual_inversion"]["curve"]
    assert [p["step"] for p in curve] == [0, 2, 4, 6, 8]
    assert "| textual_inversion | 1 |" in (tmp_path / "budget.md").read_text()
