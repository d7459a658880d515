"""Where a result came from: every result JSON records the commit, a digest of each part of the code that produced
it, the library versions and the thread count, so `make bench-status` can say which results are older than the
code they measure, and job caches key on the same facts.

A part is a set of files. `reads` is the script and every repository module it imports, directly or not (found by
parsing the imports, so an edit to a module the script never reads leaves its results current); `weights` are the
world checkpoints in bench/world/weights (a result measured on a world is dated by its weights too); `core`
(r2moe_core/) and `nodes` (nodes/) are whole folders, for the benchmarks that run through ComfyUI, which loads the
pack by folder, not by import. Results written before `reads` existed record `world` (bench/world/) and `script`
(the script and the modules in `also`) instead; they are still judged by those. Digests are of file names and
bytes, so they are the same on every machine.
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
# folder part -> (folders, file pattern); `reads` and `script` are computed from the script (see part_digests)
PARTS = {"core": (("r2moe_core",), "*.py"), "world": (("bench/world",), "*.py"), "nodes": (("nodes",), "*.py"),
         "weights": (("bench/world/weights",), "*.safetensors")}
WORLD_PARTS = ("reads", "weights")  # what the benchmarks on the world model measure
HOST_PARTS = ("core", "nodes", "reads")  # what the benchmarks that run through ComfyUI measure
LIBRARIES = ("torch", "numpy", "safetensors", "PIL")


def digest_files(paths: list[Path]) -> str:
    """One digest of files' repository paths and bytes, in a fixed order (the same on every machine)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _module_files(base: Path, parts: list[str]) -> list[Path]:
    """The file of module `parts` under `base`: a module file or a package's __init__.py ([] where neither)."""
    target = base.joinpath(*parts)
    return [p for p in (target.with_suffix(".py"), target / "__init__.py") if p.is_file()]


def _local_imports(path: Path) -> list[Path]:
    """The repository modules a source file imports (wherever the import sits, functions included): relative ones,
    the core's, the benchmark's top-level modules (bench/ is on the path of every benchmark script) and the
    modules beside the file (a script's own folder is on its path). Names imported from a package count as its
    submodules where such files exist."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [(0, alias.name.split("."), ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [(node.level, node.module.split(".") if node.module else [], [a.name for a in node.names])]
        else:
            continue
        for level, parts, names in modules:
            if level:
                bases = [path.parents[level - 1]]
            elif parts[0] == "r2moe_core":
                bases = [REPO]
            else:
                bases = [BENCH, path.parent]
            for base in bases:
                submodules = [f for name in names for f in _module_files(base, [*parts, name])]
                files = submodules or _module_files(base, parts)
                if files:
                    found += files
                    break
    return found


def source_closure(start: Path, also: tuple[Path, ...] = ()) -> list[Path]:
    """`start` (and `also`) and every repository module they import, directly or not, in a fixed order: the code a
    result really depends on, so an edit elsewhere does not date it."""
    seen: set[Path] = set()
    todo = [p.resolve() for p in (start, *also)]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += [p.resolve() for p in _local_imports(path)]
    return sorted(seen)


def part_digests(script: Path, parts: tuple[str, ...] = WORLD_PARTS, also: tuple[str, ...] = ()
                 ) -> dict[str, str]:
    """Per part, the digest of its sources now; `also` names further modules the script depends on (relative to
    bench/) that it does not import."""
    extra = tuple((BENCH / name).resolve() for name in also)
    out = {}
    for part in parts:
        if part == "reads":
            out[part] = digest_files(source_closure(script, extra))
        elif part == "script":
            out[part] = digest_files([script.resolve(), *extra])
        else:
            folders, pattern = PARTS[part]
            out[part] = digest_files([f for folder in folders for f in (REPO / folder).rglob(pattern)])
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
    now = part_digests(script, tuple(record["code"]), tuple(record.get("also", ())))
    return [part for part, digest in record["code"].items() if now.get(part) != digest]
