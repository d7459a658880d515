"""The learning sweep: variants change one thing each from the demo's R2MoE, bad options stop it before any work,
and quick mode writes a table of every asked variant on the shipped world."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from learning_sweep import DEMO_STEPS, VARIANTS, parse_variants

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "learning_sweep.py"


def test_each_r2moe_variant_changes_one_setting_of_the_demos_training() -> None:
    """One change from the demo's R2MoE, or one change beside the step count when the sweep also has R2MoE at
    that step count alone (the row it is read against)."""
    at_steps = {changes["steps"] for name, (method, changes) in VARIANTS.items()
                if method == "r2moe" and set(changes) == {"steps"}}
    for name, (method, changes) in VARIANTS.items():
        if name == "r2moe" or not name.startswith("r2moe"):
            continue
        beside_steps = len(changes) > 1 and changes.get("steps") in at_steps
        others = {k: v for k, v in changes.items() if k != "steps"} if beside_steps else changes
        assert len(others) + (method != "r2moe") == 1, name
    assert VARIANTS["r2moe_half_steps"][1]["steps"] * 2 == DEMO_STEPS
    assert VARIANTS["r2moe_steps_x2_token_warmup_x2"][1]["steps"] == VARIANTS["r2moe_steps_x2"][1]["steps"]


def test_unknown_variants_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="choose from token_only"):
        parse_variants("r2moe,nonsense")


def test_a_bad_pick_stops_the_script_before_any_work(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--pick", "2,40", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--pick takes indices" in done.stderr
    assert not any(tmp_path.iterdir()), "nothing is written or trained"


def test_quick_mode_scores_every_asked_variant(tmp_path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--variants", "token_only,r2moe_half_steps",
                    "--pick", "2,3", "--out", str(tmp_path)], check=True, timeout=900)
    result = json.loads((tmp_path / "learning_sweep_quick.json").read_text())
    assert list(result["variants"]) == ["token_only", "r2moe_half_steps"]
    for numbers in result["variants"].values():
        assert isinstance(numbers["image_alignment_heldout"], float)
        assert set(numbers["text_alignment_parts"]) == {"background", "position", "concept"}
        assert len(numbers["per_concept_heldout"][0]) == 2
    for numbers in result["variants"].values():
        assert isinstance(numbers["identity_alignment_heldout"], float)
        assert len(numbers["per_concept_identity"][0]) == 2
    assert set(result["identity_report"]) == {"retrieval", "own", "sibling"}
    ceiling = result["ceiling"]["per_concept"]
    assert set(ceiling) == set(result["base"]["per_concept"]) and len(ceiling) == 2
    assert set(result["ceiling"]["per_concept_identity"]) == set(ceiling)
    assert result["provenance"]["script"] == "bench/learning_sweep.py"
    table = (tmp_path / "learning_sweep_quick.md").read_text()
    assert "| r2moe_half_steps |" in table and "| concept (identity held-out) |" in table
