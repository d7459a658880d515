"""Kept versions of a bank: every save keeps the last N, a user lists them and restores one by digest."""

from __future__ import annotations

import pytest

import r2moe_core as core
from r2moe_core.bank import atomic_write
from r2moe_testkit.banks import add_random_concept


def saves(empty_bank, path, names, keep=3):
    for name in names:
        core.save_bank(add_random_concept(core, empty_bank, name, f"<{name}>", seed=len(name)), path, keep)


def concepts(versions):
    return [v.concepts for v in versions]


def test_each_save_keeps_the_last_n_versions_newest_first(empty_bank, tmp_path):
    path = tmp_path / "bank.safetensors"
    saves(empty_bank, path, ["a", "bb", "ccc", "dddd", "eeeee"])
    versions = core.bank_versions(path)
    assert concepts(versions) == [("eeeee",), ("dddd",), ("ccc",), ("bb",)], "current + 3 kept, oldest dropped"
    assert [v.path.name for v in versions[1:]] == ["bank.safetensors.bak", "bank.safetensors.bak2",
                                                   "bank.safetensors.bak3"]
    saves(empty_bank, path, ["ffffff"], keep=1)  # lowering the setting drops the older versions
    assert concepts(core.bank_versions(path)) == [("ffffff",), ("eeeee",)]
    saves(empty_bank, path, ["g"], keep=0)  # 0 keeps none and removes none
    assert concepts(core.bank_versions(path)) == [("g",), ("eeeee",)]


@pytest.mark.parametrize("left", [(2, 3), (1, 3), (3,), (2, 5, 9)], ids=str)
def test_a_save_killed_mid_rotation_leaves_gaps_the_next_save_closes_in_order(empty_bank, tmp_path, left):
    path = tmp_path / "bank.safetensors"
    saves(empty_bank, path, ["now"])
    for rank, age in enumerate(left):  # the versions a killed save left, newest first, with gaps in the numbers
        atomic_write.backup_path(path, age).write_bytes(path.read_bytes().replace(b"now", b"v%02d" % rank))
    saves(empty_bank, path, ["new"])
    versions = core.bank_versions(path)
    assert [v.path.name for v in versions[1:]] == ["bank.safetensors.bak", "bank.safetensors.bak2",
                                                   "bank.safetensors.bak3"][: 1 + min(len(left), 2)]
    older = [v.path.read_bytes() for v in versions[2:]]  # shifted in order, none overwritten by another
    assert [b"v%02d" % rank in data for rank, data in enumerate(older)] == [True] * len(older)


def test_restore_by_digest_is_undoable_and_idempotent(empty_bank, tmp_path):
    path = tmp_path / "bank.safetensors"
    saves(empty_bank, path, ["a", "bb", "ccc"])
    old = next(v for v in core.bank_versions(path) if v.concepts == ("a",))
    restored = core.restore_version(path, old.digest[:6])
    assert restored.age == 0 and restored.digest == old.digest
    assert concepts(core.bank_versions(path)) == [("a",), ("ccc",), ("bb",), ("a",)]
    again = core.restore_version(path, old.digest)  # queued twice: nothing more happens
    assert again.age == 0 and concepts(core.bank_versions(path)) == [("a",), ("ccc",), ("bb",), ("a",)]
    undo = core.bank_versions(path)[1]
    core.restore_version(path, undo.digest)
    assert core.load_bank(path).concepts[0].name == "ccc"


def test_bad_digests_and_damaged_versions_are_refused_without_touching_the_bank(empty_bank, tmp_path):
    path = tmp_path / "bank.safetensors"
    saves(empty_bank, path, ["a", "bb"])
    before = path.read_bytes()
    with pytest.raises(core.InvalidInputError, match=r"matches no version .*give at least 6 characters"):
        core.restore_version(path, "zzzzzz")
    with pytest.raises(core.InvalidInputError, match="matches no version"):
        core.restore_version(path, "ab")  # too short to name one
    atomic_write.backup_path(path).write_bytes(b"not a bank")
    damaged = core.bank_versions(path)[1]
    assert damaged.concepts is None and "unreadable" in damaged.line()
    with pytest.raises(core.InvalidInputError, match="is not a readable bank"):
        core.restore_version(path, damaged.digest)
    assert path.read_bytes() == before
