"""Multi-concept runs of several training seeds merge into one result with its spread, and only when they compare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from multiconcept_seeds import check_comparable, merge

REPO = Path(__file__).resolve().parents[2]


def run(seed: int, boxes_omission: float, code: str = "abc") -> dict:
    def variant(omission: float, leakage: float, ia: float) -> dict:
        part = {"omission": omission, "leakage": leakage, "placements": 10}
        return {"omission": omission, "leakage": leakage, "placements": 20, "pairs": dict(part),
                "triples": dict(part), "image_alignment": ia, "image_alignment_vs_alone": ia / 40, "images": 8}

    return {"judge_accuracy": 0.9 + seed / 100, "default": "boxes", "alone_image_alignment": 40.0,
            "alone_omission": 0.1 * seed,
            "variants": {"bank_only": variant(0.8, 0.1, 30.0), "boxes": variant(boxes_omission, 0.04, 36.0),
                         "lora_stack_regional": variant(0.5, 0.02, 34.0)},
            "settings": {"seed": seed, "images": 3, "steps": 12},
            "provenance": {"script": "bench/multiconcept.py", "code": {"core": code}}}


def test_means_and_spreads_replace_each_reading_and_the_goals_are_read_on_the_means() -> None:
    merged = merge([run(0, 0.3), run(1, 0.5), run(2, 0.4)])
    boxes = merged["variants"]["boxes"]
    assert boxes["omission"] == pytest.approx(0.4) and boxes["pairs"]["omission"] == pytest.approx(0.4)
    assert merged["spread"]["variants"]["boxes"]["omission"]["per_seed"] == [0.3, 0.5, 0.4]
    assert merged["spread"]["variants"]["boxes"]["omission"]["std"] == pytest.approx(0.1)
    assert merged["settings"]["seed"] == [0, 1, 2] and len(merged["runs"]) == 3
    assert merged["judge_accuracy"] == pytest.approx(0.91)
    assert merged["alone_omission"] == pytest.approx(0.1) and merged["spread"]["alone_omission"]["per_seed"] == [
        0.0, 0.1, 0.2]
    goals = merged["goals"]
    assert goals["omission_at_most_half_of_bank_only"] == {"value": 0.4, "bound": 0.4, "met": True}
    assert goals["omission_below_lora_stack_regional"]["met"] is True
    assert goals["leakage_below_lora_stack_regional"]["met"] is False  # 0.04 against 0.02
    assert goals["image_alignment_vs_alone"]["met"] is True  # 36 / 40


def test_runs_that_differ_in_more_than_the_seed_are_refused() -> None:
    with pytest.raises(SystemExit, match="other code"):
        check_comparable([run(0, 0.3), run(1, 0.3, code="def")], ["a", "b"])
    other = run(1, 0.3)
    other["settings"]["steps"] = 20
    with pytest.raises(SystemExit, match="other settings"):
        check_comparable([run(0, 0.3), other], ["a", "b"])
    with pytest.raises(SystemExit, match="give each its own --seed"):
        check_comparable([run(0, 0.3), run(0, 0.4)], ["a", "b"])


def test_the_command_names_a_folder_without_a_run(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "multiconcept.json").write_text(json.dumps(run(0, 0.3)))
    done = subprocess.run([sys.executable, str(REPO / "bench" / "multiconcept_seeds.py"), str(tmp_path / "a"),
                           str(tmp_path / "b"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2 and "no multiconcept.json in" in done.stderr and str(tmp_path / "b") in done.stderr
    assert not (tmp_path / "out").exists()

