"""ComfyUI with the pack for the browser test tier: a fresh base folder with the tiny checkpoint, a tiny SAM and
two drawn concept photo folders; prints one JSON line ({"url", "base", "concepts"}) and serves until stdin
closes. `--front-end-root DIR` serves another frontend build (a newer comfyui-frontend-package)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from comfy_inprocess import CACHE, TINY_CKPT_NAME, make_base_dir, require_host
from comfy_server import REPO, ComfyServer, ensure_tiny_checkpoint
from demo_concepts import draw_concept_sets

sys.path.insert(0, str(REPO / "tests"))
from r2moe_testkit.sam import TINY_SAM_NAME, write_tiny_sam


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--front-end-root", type=Path, default=None)
    parser.add_argument("--base", type=Path, default=None, help="base folder (default: a new temporary one)")
    opts = parser.parse_args()
    require_host()
    base = opts.base or Path(tempfile.mkdtemp(prefix="r2moe_browser_"))
    make_base_dir(base, ensure_tiny_checkpoint(CACHE / TINY_CKPT_NAME))
    write_tiny_sam(base / "models" / "sams" / TINY_SAM_NAME)
    concepts = draw_concept_sets(base / "input" / "concepts", count=3, size=64)
    extra = ["--front-end-root", str(opts.front_end_root)] if opts.front_end_root else []
    with ComfyServer(base_dir=base, log_path=base / "server.log", gpu=False, extra_args=extra) as server:
        info = {"url": server.url, "base": str(base), "concepts": {k: str(v[0]) for k, v in concepts.items()}}
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # serve until the test runner closes our stdin (or exits)


if __name__ == "__main__":
    main()
