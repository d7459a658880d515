"""Make .device/, what a device call carries beside the working tree (`make device-pack`; standard library only).

The device machine has no network and its own Python (3.12) and torch; it lacks the pinned ComfyUI and a few
pure-Python packages the host imports. .device/ holds:
- comfyui.tar.gz: the pinned host's source tree (.host/ComfyUI without its tests and model folders);
- wheels/: the packages the device image lacks (torchsde and its trampoline), for Python 3.12 on x86-64;
- MANIFEST.json: every carried file with its size, and the whole call's size against the 64 MiB limit.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = REPO / ".host" / "ComfyUI"
LIMIT = 64 * 1024 * 1024
# Imported by the host at start (comfy.k_diffusion.sampling) and absent from the device image.
WHEELS = ("torchsde==0.2.6", "trampoline==0.1.2")
SKIP = {"tests", "tests-unit", "custom_nodes", "models", "input", "output", "temp", "user", "__pycache__",
        ".installed", ".git"}
LOG = logging.getLogger("r2moe.device_pack")


def keep_in_archive(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """tarfile filter: the host's source only (no tests, model folders, caches or links out of the tree)."""
    parts = Path(info.name).parts
    if len(parts) > 1 and (parts[1] in SKIP or "__pycache__" in parts):
        return None
    return None if info.issym() else info


def pack_host(dest: Path) -> Path:
    if not (HOST / "main.py").is_file():
        raise SystemExit(f"{HOST} is missing: run `make env` first.")
    target = dest / "comfyui.tar.gz"
    with tarfile.open(target, "w:gz", compresslevel=9) as archive:
        archive.add(HOST, arcname="ComfyUI", filter=keep_in_archive)
    return target


def fetch_wheels(dest: Path) -> list[Path]:
    folder = dest / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for arg in ("--platform", tag)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
         "3.12", "--implementation", "cp", *platforms, "--platform", "any", "-d", str(folder), *WHEELS],
        check=True,
    )
    return sorted(folder.glob("*.whl"))


def tree_bytes() -> int:
    """Bytes of what a call sends besides .device/: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / name.decode()).stat().st_size for name in listed if name and (REPO / name.decode()).is_file())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=REPO / ".device")
    opts = parser.parse_args()
    opts.dest.mkdir(parents=True, exist_ok=True)
    files = [pack_host(opts.dest), *fetch_wheels(opts.dest)]
    carried = {str(p.relative_to(opts.dest)): p.stat().st_size for p in files}
    tree = tree_bytes()
    total = tree + sum(carried.values())
    manifest = {"carried": carried, "working_tree_bytes": tree, "total_bytes": total, "limit_bytes": LIMIT}
    (opts.dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    for name, size in carried.items():
        LOG.info("  .device/%-48s %6.1f MiB", name, size / 2**20)
    LOG.info("working tree %.1f MiB + .device %.1f MiB = %.1f MiB of the 64 MiB a device call may carry",
             tree / 2**20, sum(carried.values()) / 2**20, total / 2**20)
    if total > LIMIT:
        raise SystemExit("Too large for one device call: remove untracked files or carry less.")
    LOG.info("device call: command `make device-check` (WORLD=1 for the world), carry [\".device\"]")


if __name__ == "__main__":
    main()
