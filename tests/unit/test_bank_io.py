from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

import r2moe_core as core
from r2moe_core.bank import atomic_write as atomic
from r2moe_testkit.banks import add_random_concept


def _assert_same(a, b):
    assert a.config == b.config and a.layers == b.layers and a.num_tasks == b.num_tasks
    assert torch.equal(a.fingerprint.samples, b.fingerprint.samples)
    for name, proj in a.projections.items():
        other = b.projections[name]
        assert set(proj.experts) == set(other.experts)
        for i, e in proj.experts.items():
            o = other.experts[i]
            assert torch.equal(e.down, o.down) and torch.equal(e.up, o.up) and torch.equal(e.gate, o.gate)
    for ca, cb in zip(a.concepts, b.concepts, strict=True):
        fields = ("name", "token", "class_word", "task", "kept")
        assert [getattr(ca, f) for f in fields] == [getattr(cb, f) for f in fields]
        assert torch.equal(ca.embedding, cb.embedding) and torch.equal(ca.gate_input, cb.gate_input)


def test_round_trip_is_exact_and_pruned_experts_store_nothing(empty_bank, tmp_path):
    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    names = bank.projection_names()
    bank = bank.without_experts(1, names[:3])
    path = core.save_bank(bank, tmp_path / "bank.safetensors")
    _assert_same(bank, core.load_bank(path))
    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
        meta = json.loads(handle.metadata()["r2moe"])
    assert meta["format_version"] == 1, "a bank without pictures stays readable by packs that read format 1"
    assert sum(".expert." in k for k in keys) == 3 * (len(names) - 3), "pruned experts must not be stored"


def test_a_concepts_picture_round_trips_counts_in_its_size_and_is_checked_on_load(empty_bank, tmp_path):
    from safetensors.torch import save

    from r2moe_core.bank.bank_file import bank_from_bytes, bank_to_tensors
    from r2moe_core.bank.expert_bank import thumbnail_of
    from r2moe_core.bank.report import bank_report, concept_gallery

    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    plain = bank.concept_bytes(bank.concepts[0])
    picture = thumbnail_of(torch.rand(1, 300, 200, 3))
    assert picture.dtype == torch.uint8 and picture.shape == (128, 85, 3)
    bank = bank.with_thumbnail("dog", picture)
    assert bank.concept_bytes(bank.concepts[0]) == plain + picture.numel()
    path = core.save_bank(bank, tmp_path / "bank.safetensors")
    loaded = core.load_bank(path)
    assert torch.equal(loaded.concepts[0].thumbnail, picture)
    with safe_open(str(path), "pt") as handle:
        assert json.loads(handle.metadata()["r2moe"])["format_version"] == core.FORMAT_VERSION == 2
    assert "has a picture" in bank_report(loaded)
    gallery = concept_gallery(loaded)
    assert gallery.ndim == 3 and gallery.shape[-1] == 3 and gallery.max() <= 1.0
    tensors, metadata = bank_to_tensors(bank)
    tensors["concept.1.thumbnail"] = torch.zeros(4, 4, 3, dtype=torch.uint8)  # too small: damaged or hand-made
    with pytest.raises(core.BankFormatError, match="thumbnail sides must be 8-128"):
        bank_from_bytes(save(tensors, metadata=metadata))
    with pytest.raises(core.InvalidInputError, match="uint8"):
        bank.with_thumbnail("dog", torch.rand(16, 16, 3))


def test_save_keeps_previous_version_as_bak(empty_bank, tmp_path):
    path = core.save_bank(empty_bank, tmp_path / "bank.safetensors")
    first = path.read_bytes()
    core.save_bank(add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1), path)
    assert atomic.backup_path(path).read_bytes() == first
    assert core.load_bank(path).num_tasks == 1


def test_crash_during_save_leaves_old_file_intact(empty_bank, tmp_path, monkeypatch):
    path = core.save_bank(empty_bank, tmp_path / "bank.safetensors")
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated"):
        core.save_bank(add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.safetensors"], "no temporary file left behind"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[: len(d) // 2], "truncated|could not be read|missing"),
        (lambda d: b"", "empty or truncated"),
        (lambda d: d.replace(b'"format_version\\": 1', b'"format_version\\": 99'), "v99.*Update the R2MoE pack"),
    ],
)
def test_damaged_or_future_files_are_refused_clearly(empty_bank, mutate, message):
    data = core.bank_to_bytes(add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1))
    with pytest.raises(core.BankFormatError, match=message):
        core.bank_from_bytes(mutate(data), source="x.safetensors")


def test_a_plain_lora_file_is_not_taken_for_a_bank(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(core.BankFormatError, match="not an R2MoE expert bank"):
        core.load_bank(path)


def test_missing_tensor_is_named(empty_bank):
    from safetensors.torch import load, save

    data = core.bank_to_bytes(add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1))
    metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    tensors = load(data)
    tensors.pop("concept.1.gate_input")
    with pytest.raises(core.BankFormatError, match=r"concept\.1\.gate_input"):
        core.bank_from_bytes(save(tensors, metadata=metadata), source="b")


def test_a_save_sweeps_what_killed_saves_left_but_never_a_live_writers_file(empty_bank, tmp_path):
    import subprocess
    import sys
    import time

    path = tmp_path / "bank.safetensors"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(gone.stdout), os.getppid()
    old = time.time() - 2 * atomic.DEAD_WRITER_GRACE_S
    leftovers = {name: tmp_path / name for name in (
        f".bank.safetensors.{dead_pid}.tmp", f".bank.safetensors.{dead_pid}.bak.tmp",  # killed: swept
        f".bank.safetensors.{live_pid}.tmp",  # a live process mid-save: kept
        f".other.safetensors.{dead_pid}.tmp",  # another bank's: not this save's business
    )}
    for file in leftovers.values():
        file.write_bytes(b"x" * 100)
        os.utime(file, (old, old))
    fresh = tmp_path / f".bank.safetensors.{dead_pid + 1}.tmp"  # a just-started writer on another machine
    fresh.write_bytes(b"x")
    core.save_bank(empty_bank, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["bank.safetensors", fresh.name, f".bank.safetensors.{live_pid}.tmp", f".other.safetensors.{dead_pid}.tmp"])


def test_a_lock_left_empty_by_a_writer_killed_as_it_took_it_does_not_block_the_next_save(empty_bank, tmp_path,
                                                                                          monkeypatch):
    import time

    path = tmp_path / "bank.safetensors"
    core.save_bank(empty_bank, path)
    lock = tmp_path / ".bank.safetensors.lock"
    lock.write_bytes(b"")  # the writer was killed between creating its lock and naming itself in it
    monkeypatch.setattr(atomic, "LOCK_WAIT_S", 0.3)
    with pytest.raises(core.R2MoEError, match="Another process has been saving"):
        core.save_bank(empty_bank, path)  # a fresh empty lock may be a live writer's, still naming itself
    aged = time.time() - 2 * atomic.EMPTY_LOCK_STALE_S
    os.utime(lock, (aged, aged))
    core.save_bank(empty_bank, path)
    assert not lock.exists() and (tmp_path / "bank.safetensors.bak").is_file()
