"""Bank files under kill -9 and under two processes saving the same name at once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import r2moe_core as core
from r2moe_core.bank import atomic_write

WRITER = Path(__file__).resolve().parent / "bank_writer.py"


def concept_names(path: Path) -> list[str]:
    return [c.name for c in core.bank_from_bytes(path.read_bytes(), str(path)).concepts]


def test_kill_9_during_saves_leaves_a_whole_bank_and_the_next_save_sweeps_the_leftovers(tmp_path):
    path = tmp_path / "bank.safetensors"
    rng = random.Random(0)
    for kill in range(12):
        writer = subprocess.Popen([sys.executable, str(WRITER), "loop", str(path)], stdout=subprocess.PIPE)
        assert writer.stdout.readline().strip() == b"saved"
        time.sleep(rng.uniform(0.0, 0.3))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert concept_names(path) in (["save-a"], ["save-b"]), f"kill {kill}: the bank is the old or the new one"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock")))
    aged = time.time() - 2 * atomic_write.DEAD_WRITER_GRACE_S  # the killed writers' files, a few minutes on
    for name in leftovers:
        os.utime(tmp_path / name, (aged, aged))
    core.save_bank(core.bank_from_bytes(path.read_bytes()), path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["bank.safetensors", "bank.safetensors.bak", "bank.safetensors.bak2", "bank.safetensors.bak3"], (
        leftovers)


def test_two_processes_saving_one_name_at_once_keep_both_writes(tmp_path):
    """Two ComfyUI instances on one models folder: whichever saves last, the other's bank is the kept version."""
    rounds = [tmp_path / f"round{i}" for i in range(10)]
    first = _old_bank_bytes()
    for directory in rounds:
        directory.mkdir()
        (directory / "bank.safetensors").write_bytes(first)
    start = time.time() + 6.0  # both processes have imported torch and built their bank by then
    writers = [subprocess.Popen([sys.executable, str(WRITER), "rounds", tag, str(start), *map(str, rounds)])
               for tag in ("writer-a", "writer-b")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    for directory in rounds:
        kept = {tuple(concept_names(directory / "bank.safetensors")),
                tuple(concept_names(directory / "bank.safetensors.bak"))}
        assert kept == {("writer-a",), ("writer-b",)}, f"{directory.name}: {kept} (a write was lost)"
        assert concept_names(directory / "bank.safetensors.bak2") == ["old"], "the version before both is kept too"
        assert sorted(p.name for p in directory.iterdir()) == ["bank.safetensors", "bank.safetensors.bak",
                                                               "bank.safetensors.bak2"]


def _old_bank_bytes() -> bytes:
    sys.path.insert(0, str(WRITER.parent))
    from bank_writer import bank_named

    return core.bank_to_bytes(bank_named("old"))
