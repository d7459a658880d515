"""Results that cannot go stale silently: a result is dated by its code, and `make bench-status` says which part
of the code moved since."""

from __future__ import annotations

import json
from pathlib import Path

import provenance
import pytest
import status

SOURCES = {
    "bench/run.py": "import json\nfrom helper import steps\nfrom world.b import draw\n",
    "bench/helper.py": "from r2moe_core.a import learn\n",
    "bench/world/b.py": "from .c import shade\n",
    "bench/world/c.py": "def shade(): ...\n",
    "bench/world/unused.py": "# no benchmark imports this\n",
    "bench/other.py": "from r2moe_core.unused import x\n",
    "r2moe_core/a.py": "def learn(): ...\n",
    "r2moe_core/unused.py": "x = 1\n",
    "nodes/c.py": "# the pack's nodes\n",
}


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with a core, a benchmark world, its weights and a benchmark script that imports some of them
    (not a git work tree)."""
    for rel, text in {**SOURCES, "bench/world/weights/w.safetensors": "weights"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    monkeypatch.setattr(provenance, "BENCH", tmp_path / "bench")
    monkeypatch.setattr(status, "REPO", tmp_path)
    return tmp_path


def write_result(tree: Path, parts: tuple[str, ...] = provenance.WORLD_PARTS) -> Path:
    path = tree / "bench" / "results" / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = provenance.provenance(tree / "bench" / "run.py", parts)
    path.write_text(json.dumps({"provenance": record, "value": 1.0}))
    return path


def test_a_result_is_current_until_code_it_reads_changes(tree: Path):
    """Only the modules the script imports, directly or through others, date its result: an edit to code it never
    reads leaves it current (a whole-folder digest called every result stale after any edit)."""
    result = write_result(tree)
    assert status.result_status(result)[0] == "current"
    for unread in ("nodes/c.py", "bench/world/unused.py", "bench/other.py", "r2moe_core/unused.py"):
        (tree / unread).write_text("# changed, but the script does not read it\n")
        assert status.result_status(result)[0] == "current", unread
    (tree / "bench" / "world" / "c.py").write_text("def shade(): return 1\n")  # read through b.py's relative import
    state, detail = status.result_status(result)
    assert state == "stale" and "reads changed" in detail and "re-run bench/run.py" in detail


@pytest.mark.parametrize("edit", ["r2moe_core/a.py", "bench/helper.py", "bench/run.py"])
def test_an_edit_to_any_module_on_the_import_chain_dates_the_result(tree: Path, edit: str):
    result = write_result(tree)
    (tree / edit).write_text((tree / edit).read_text() + "# edited\n")
    assert status.result_status(result)[0] == "stale"


def test_a_new_import_dates_the_result(tree: Path):
    """The script starts reading a module it did not read: what it measures may have changed."""
    result = write_result(tree)
    (tree / "bench" / "world" / "c.py").write_text("from r2moe_core.unused import x\ndef shade(): ...\n")
    assert status.result_status(result)[0] == "stale"


def test_host_results_are_dated_by_the_whole_pack(tree: Path):
    """ComfyUI loads the pack by folder, not through the script's imports: any node or core edit dates them."""
    result = write_result(tree, provenance.HOST_PARTS)
    (tree / "nodes" / "c.py").write_text("# a node changed\n")
    state, detail = status.result_status(result)
    assert state == "stale" and "nodes changed" in detail


def test_results_recorded_by_folder_are_still_judged_by_folder(tree: Path):
    """Results written before the import closure was recorded name `core`, `world` and `script` parts."""
    result = write_result(tree, ("core", "world", "weights", "script"))
    (tree / "bench" / "world" / "unused.py").write_text("# changed\n")
    state, detail = status.result_status(result)
    assert state == "stale" and "world changed" in detail


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
    (tree / "r2moe_core" / "a.py").write_text("# the core changed between the sessions\n")  # run.py reads it
    now = provenance.provenance(script)
    path = tree / "bench" / "results" / "parts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": now, "tracks": {"world": {"provenance": now},
                                                              "photo": {"provenance": before}}}))
    state, detail = status.result_status(path)
    assert state == "stale" and "photo track: reads changed" in detail and "world track" not in detail
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
