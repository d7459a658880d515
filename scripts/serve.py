"""`make serve`: ComfyUI with the pack on 127.0.0.1 (CPU unless a GPU is present), until Ctrl-C.

    make serve                              the development host (.host/ComfyUI) with the tiny checkpoint listed
    make serve COMFYUI=/path/to/ComfyUI     your own ComfyUI folder, its models and its custom_nodes as they are
                                            (the pack must be installed there; nothing is written into it)
    PYTHON_FOR_COMFYUI=/its/venv/bin/python the interpreter to run it with (default: this one)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from comfy_server import HOST_ROOT, REPO, ensure_tiny_checkpoint, has_gpu, server_command

LOG = logging.getLogger("r2moe")


def pack_installed(comfyui: Path) -> bool:
    """Whether `comfyui/custom_nodes` holds this pack (a clone, a copy or a link to it)."""
    folder = comfyui / "custom_nodes"
    if not folder.is_dir():
        return False
    for entry in folder.iterdir():
        if (entry / "nodes" / "train_nodes.py").is_file() and (entry / "r2moe_core").is_dir():
            return True
    return False


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--host", type=Path, default=HOST_ROOT,
                        help="the ComfyUI folder to start (default: the development host)")
    parser.add_argument("--python", default=os.environ.get("PYTHON_FOR_COMFYUI") or sys.executable,
                        help="the interpreter that has that ComfyUI's requirements")
    opts = parser.parse_args()
    comfyui = opts.host.expanduser().resolve()
    if not (comfyui / "main.py").is_file():
        parser.error(f"{comfyui} is not a ComfyUI folder (it has no main.py); give the folder you start ComfyUI "
                     "from, e.g. COMFYUI=~/ComfyUI")
    development = comfyui == HOST_ROOT.resolve()
    if development:
        ensure_tiny_checkpoint(HOST_ROOT / "models" / "checkpoints" / "r2moe_tiny_sd15.safetensors")
    elif not pack_installed(comfyui):
        parser.error(f"the R2MoE pack is not in {comfyui / 'custom_nodes'}; install it there first (ComfyUI-Manager, "
                     f"or `ln -s {REPO} {comfyui / 'custom_nodes' / 'r2moe'}`)")
    cmd = server_command(opts.port, gpu=has_gpu(opts.python))
    cmd[:2] = [opts.python, str(comfyui / "main.py")]
    LOG.info("Starting %s; open http://127.0.0.1:%d  (Ctrl-C stops the server)", comfyui, opts.port)
    env = {**os.environ, "R2MOE_TINY_MODELS": "1" if development else os.environ.get("R2MOE_TINY_MODELS", "0")}
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(cmd, cwd=comfyui, env=env, check=False)


if __name__ == "__main__":
    main()
