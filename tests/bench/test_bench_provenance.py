"""Results that cannot go stale silently: a result is dated by its code, and `make bench-status` says which part
of the code moved since."""

from __future__ import annotations

import json
from pathlib import Path

import provenance
import pytest
import status


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with a core, a benchmark world, its weights and a benchmark script (not a git work tree)."""
    for rel in ("r2moe_core/a.py", "bench/world/b.py", "nodes/c.py", "bench/run.py", "bench/helper.py",
                "bench/world/weights/w.safetensors"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    monkeypatch.setattr(provenance, "BENCH", tmp_path / "bench")
    monkeypatch.setattr(status, "REPO", tmp_path)
    return tmp_path


def write_result(tree: Path) -> Path:
    path = tree / "bench" / "results" / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = provenance.provenance(tree / "bench" / "run.py", also=("helper.py",))
    path.write_text(json.dumps({"provenance": record, "value": 1.0}))
    return path


def test_a_result_is_current_until_a_part_of_its_code_changes(tree: Path):
    result = write_result(tree)
    assert status.result_status(result)[0] == "current"
    (tree / "nodes" / "c.py").write_text("# not measured by this script\n")
    assert status.result_status(result)[0] == "current"
    (tree / "bench" / "helper.py").write_text("# the script's helper changed\n")
    (tree / "r2moe_core" / "a.py").write_text("# the core changed\n")
    state, detail = status.result_status(result)
    assert state == "stale" and "core, script changed" in detail and "re-run bench/run.py" in detail


def test_results_without_provenance_are_listed_as_unknown_not_current(tree: Path):
    old = tree / "bench" / "results" / "old.json"
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text(json.dumps({"methods": {}}))
    state, detail = status.result_status(old)
    assert state == "unknown" and "re-run its script" in detail


def test_new_world_weights_make_a_world_result_stale(tree: Path):
    """A result measured on the world model is as old as the weights it was measured on, not only its code."""
    result = write_result(tree)
    (tree / "bench" / "world" / "weights" / "w.safetensors").write_bytes(b"other weights")
    state, detail = status.result_status(result)
    assert state == "stale" and "weights changed" in detail


def test_a_result_run_in_parts_is_as_old_as_its_oldest_track(tree: Path):
    """The lifelong benchmark can run one track per session; a track kept from before a code change dates it."""
    script = tree / "bench" / "run.py"
    before = provenance.provenance(script)
    (tree / "r2moe_core" / "a.py").write_text("# the core changed between the sessions\n")
    now = provenance.provenance(script)
    path = tree / "bench" / "results" / "parts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": now, "tracks": {"world": {"provenance": now},
                                                              "photo": {"provenance": before}}}))
    state, detail = status.result_status(path)
    assert state == "stale" and "photo track: core changed" in detail and "world track" not in detail
    path.write_text(json.dumps({"provenance": now, "tracks": {"world": {"provenance": now}}}))
    assert status.result_status(path)[0] == "current"


def test_lifelong_tracks_merge_only_with_the_same_settings(tmp_path: Path):
    from lifelong import kept_tracks

    settings = {"budget": {"steps": 50}, "eval": {"steps": 12}, "checkpoint": "w.safetensors",
                "concepts": "c.json", "heldout_concepts": "h.json"}
    earlier = tmp_path / "lifelong.json"
    earlier.write_text(json.dumps({"provenance": {"commit": "old"}, "settings": settings,
                                   "tracks": {"world": {"methods": {}}, "photo": {"methods": {}}}}))
    kept = kept_tracks(earlier, ["world"], settings)
    assert list(kept) == ["photo"] and kept["photo"]["provenance"] == {"commit": "old"}
    assert kept_tracks(earlier, ["world", "heldout", "photo"], settings) == {}
    with pytest.raises(SystemExit, match="budget"):
        kept_tracks(earlier, ["world"], settings | {"budget": {"steps": 100}})
