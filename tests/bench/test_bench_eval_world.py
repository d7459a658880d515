"""`bench/eval_world.py` writes the committed shape: what the world draws, what its evaluator reads, the judge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEYS = {"background", "colour", "position", "count", "shape", "texture", "two_objects"}


def test_a_small_run_writes_every_attribute_and_the_judge(tmp_path) -> None:
    out = tmp_path / "eval.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "eval_world.py"), "--prompts", "8", "--two-object-prompts",
                    "4", "--steps", "2", "--eval-images", "256", "--out", str(out)], check=True, timeout=900)
    results = json.loads(out.read_text())
    for part in ("accuracy", "evaluator_accuracy", "vae_round_trip"):
        assert set(results[part]) >= KEYS
        assert all(0.0 <= v <= 1.0 for v in results[part].values())
    wrong_colours = 8 * (1 - results["accuracy"]["colour"])
    assert round(wrong_colours) == sum(results["colour_confusions"].values())  # every miss named, none twice
    assert 0.0 <= results["judge_accuracy"] <= 1.0 and "none" in results["judge"]["per_class"]
    assert 0.0 <= results["judge"]["two_concepts_located"] <= 1.0 and results["judge"]["two_concept_renders"] == 24


def test_the_committed_evaluation_has_the_same_shape() -> None:
    committed = json.loads((REPO / "bench" / "results" / "eval_world.json").read_text())
    assert set(committed["accuracy"]) >= KEYS and set(committed["evaluator_accuracy"]) >= KEYS
