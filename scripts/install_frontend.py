"""Unpack a newer ComfyUI frontend build (the comfyui-frontend-package wheel from PyPI) for the browser tier.

The pinned host serves its own frontend; `--front-end-root <dest>/static` serves this one instead, so the pack is
also checked against what users of a current ComfyUI see. Standard library only; nothing is installed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

LOG = logging.getLogger("r2moe.install_frontend")
PREFIX = "comfyui_frontend_package/static/"


def install(version: str, dest: Path) -> Path:
    """Unpack the static files of comfyui-frontend-package==version into dest/static (kept if present)."""
    static = dest / "static"
    if (static / "index.html").is_file():
        return static
    with tempfile.TemporaryDirectory() as tmp:
        wanted = f"comfyui-frontend-package=={version}"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", wanted, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked, [m for m in archive.namelist() if m.startswith(PREFIX)])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(static, ignore_errors=True)
        shutil.move(str(unpacked / PREFIX), static)
    LOG.info("ComfyUI frontend %s unpacked at %s", version, static)
    return static


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--version", required=True)
    parser.add_argument("--dest", type=Path, required=True)
    opts = parser.parse_args()
    install(opts.version, opts.dest)


if __name__ == "__main__":
    main()
