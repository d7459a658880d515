"""`make serve`: ComfyUI with the pack on 127.0.0.1 (CPU unless a GPU is present), until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
from pathlib import Path

from comfy_server import HOST_ROOT, ensure_tiny_checkpoint, has_gpu, server_command


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--host", type=Path, default=HOST_ROOT, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    ensure_tiny_checkpoint(HOST_ROOT / "models" / "checkpoints" / "r2moe_tiny_sd15.safetensors")
    cmd = server_command(opts.port, gpu=has_gpu())
    logging.getLogger("r2moe").info("Open http://127.0.0.1:%d  (Ctrl-C stops the server)", opts.port)
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(cmd, cwd=HOST_ROOT, env={**os.environ, "R2MOE_TINY_MODELS": "1"}, check=False)


if __name__ == "__main__":
    main()
