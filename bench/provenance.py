"""Where a result came from: every result JSON records the commit, a digest of each part of the code that produced
it, the library versions and the thread count, so `make bench-status` can say which results are older than the
code they measure, and job caches key on the same facts.

A part is a set of files: `core` (r2moe_core/), `world` (bench/world/, the benchmark's shared code), `weights`
(the world checkpoints in bench/world/weights: a result measured on a world is dated by its weights too), `nodes`
(nodes/, for the benchmarks that run through ComfyUI) and `script` (the benchmark script itself and the bench
modules it imports). Digests are of file names and bytes, so they are the same on every machine.
"""

from __future__ import annotations

import ast
import hashlib
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# part -> (folders, file pattern); `weights` are the world checkpoints a result was measured on
PARTS = {"core": (("r2moe_core",), "*.py"), "world": (("bench/world",), "*.py"), "nodes": (("nodes",), "*.py"),
         "weights": (("bench/world/weights",), "*.safetensors")}
WORLD_PARTS = ("core", "world", "weights")  # what the benchmarks on the world model measure
HOST_PARTS = ("core", "nodes")  # what the benchmarks that run through ComfyUI measure
LIBRARIES = ("torch", "numpy", "safetensors", "PIL")


def digest_files(paths: list[Path]) -> str:
    """One digest of files' repository paths and bytes, in a fixed order (the same on every machine)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _local_imports(path: Path) -> list[Path]:
    """The repository modules a source file imports: relative ones beside it and the core's (absolute)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or (node.module is None and node.level == 0):
            continue
        if node.level:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            parts = node.module.split(".") if node.module else []
        elif node.module.split(".")[0] == "r2moe_core":
            base, parts = REPO, node.module.split(".")
        else:
            continue
        target = base.joinpath(*parts)
        found += [p for p in (target.with_suffix(".py"), target / "__init__.py") if p.is_file()]
    return found


def source_closure(start: Path) -> list[Path]:
    """`start` and every repository module it imports, directly or not, in a fixed order: the code a cached
    result really depends on, so an edit elsewhere does not void it."""
    seen: set[Path] = set()
    todo = [start.resolve()]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += [p.resolve() for p in _local_imports(path)]
    return sorted(seen)


def part_digests(script: Path, parts: tuple[str, ...] = WORLD_PARTS, also: tuple[str, ...] = ()
                 ) -> dict[str, str]:
    """Per part, the digest of its sources now; `also` names further modules the script imports (relative to
    bench/)."""
    out = {p: digest_files([f for folder in PARTS[p][0] for f in (REPO / folder).rglob(PARTS[p][1])]) for p in parts}
    out["script"] = digest_files([script.resolve(), *((BENCH / name).resolve() for name in also)])
    return out


def library_versions() -> dict[str, str]:
    import importlib

    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            versions[name] = "absent"
    return versions


def git(*args: str) -> str:
    """A git command's output in the repository, "" where git fails (no git, or a copy without its metadata)."""
    run = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO)
    return run.stdout.strip() if run.returncode == 0 else ""


def git_commit() -> str:
    """HEAD's short hash, `+changes` when the working tree differs from it (what ran is then the digests)."""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def provenance(script: Path, parts: tuple[str, ...] = WORLD_PARTS, also: tuple[str, ...] = ()) -> dict[str, Any]:
    """The `provenance` entry of a result JSON written by `script`."""
    import torch

    return {"script": str(script.resolve().relative_to(REPO)), "commit": git_commit(),
            "code": part_digests(script, parts, also), "also": list(also), "libraries": library_versions(),
            "threads": torch.get_num_threads(), "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def staleness(record: dict[str, Any]) -> list[str]:
    """The parts of the code that changed since `record` (a result's provenance) was written; [] = current."""
    script = REPO / record["script"]
    if not script.is_file():
        return ["script (gone)"]
    now = part_digests(script, tuple(p for p in record["code"] if p != "script"), tuple(record.get("also", ())))
    return [part for part, digest in record["code"].items() if now.get(part) != digest]
