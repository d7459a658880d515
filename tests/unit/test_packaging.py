"""What a Comfy Registry / ComfyUI-Manager install receives: the tracked files that `.comfyignore` keeps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


def archived_files() -> set[str]:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    ignored = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-from=.comfyignore"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    return set(tracked.split()) - set(ignored.split())


def test_the_registry_archive_holds_the_pack_and_nothing_for_development():
    files = archived_files()
    tops = {f.split("/")[0] for f in files}
    assert {"__init__.py", "nodes", "r2moe_core", "web", "example_workflows", "pyproject.toml", "requirements.txt",
            "README.md", "LICENSE"} <= tops
    assert not tops & {"bench", "tests", "scripts", ".ci", "docs", "Makefile", "requirements-dev.txt"}
    assert not [f for f in files if f.endswith((".safetensors", ".pt"))], "no weights in a user's install"
    size = sum((REPO / f).stat().st_size for f in files)
    assert size < 3_000_000, f"the archive is {size / 1e6:.1f} MB"


def test_pyproject_declares_what_the_registry_reads():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    comfy = meta["tool"]["comfy"]
    assert comfy["requires-comfyui"].startswith(">=0.3.") and comfy["PublisherId"] and "web" in comfy["includes"]
    requirements = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert sorted(filter(None, requirements)) == sorted(meta["project"]["dependencies"])
    assert not any(r.split("=")[0].split(">")[0].strip() == "torch" for r in meta["project"]["dependencies"])
    assert "Operating System :: OS Independent" in meta["project"]["classifiers"]
