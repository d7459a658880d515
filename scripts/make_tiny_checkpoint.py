"""Write a deterministic tiny checkpoint (UNet + small text encoders + TAESD) of one model family for tests and the
demo: SD1.5 (default), SD 2.x v-prediction or SDXL layout."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST_ROOT = REPO / ".host" / "ComfyUI"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="builder digest recorded in the checkpoint")
    parser.add_argument("--family", choices=("sd1", "sd2", "sdxl"), default="sd1")
    opts = parser.parse_args()
    sys.path.insert(0, str(HOST_ROOT))
    sys.argv = sys.argv[:1]
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True
    builder = REPO / "scripts" / "dev_models" / "tiny_models.py"
    spec = importlib.util.spec_from_file_location("r2moe_tiny_models", builder)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    path = tiny.write_tiny_checkpoint(str(opts.out), seed=opts.seed, tag=opts.tag, family=opts.family)
    logging.getLogger("r2moe").info("tiny checkpoint written to %s", path)


if __name__ == "__main__":
    main()
