"""`make demo`: a headless ComfyUI with the pack runs the example workflow and writes images and a report.

Without --ckpt it uses the built-in tiny SD1.5-layout model (random weights: the images are noise, the point is
that the whole graph runs); with --ckpt path/to/sd15.safetensors it uses that checkpoint at 512x512.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from comfy_server import HOST_ROOT, REPO, ComfyServer

LOG = logging.getLogger("r2moe.demo")
WORKFLOW = REPO / "workflows" / "api_apply_bank.json"
TINY = "r2moe_tiny_sd15.safetensors"


def prepare_checkpoint(ckpt: Path | None) -> tuple[str, bool]:
    """Put the checkpoint into the host's models/checkpoints; return its name and whether it is the tiny one."""
    folder = HOST_ROOT / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    if ckpt is None:
        target = folder / TINY
        if not target.exists():
            subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_checkpoint.py"), "--out", str(target)],
                           check=True)
        return TINY, True
    ckpt = ckpt.expanduser().resolve()
    if not ckpt.is_file():
        raise SystemExit(f"CKPT={ckpt} does not exist; give the path of an SD1.5 .safetensors checkpoint.")
    target = folder / ckpt.name
    if not target.exists():
        target.symlink_to(ckpt)
    return ckpt.name, False


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", type=Path, default=None, help="an SD1.5 checkpoint; default: the tiny model")
    parser.add_argument("--output", type=Path, default=REPO / "output")
    parser.add_argument("--host", type=Path, default=HOST_ROOT, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    opts.output.mkdir(parents=True, exist_ok=True)
    ckpt_name, tiny = prepare_checkpoint(opts.ckpt)

    graph = json.loads(WORKFLOW.read_text())
    graph["1"]["inputs"]["ckpt_name"] = ckpt_name
    if not tiny:
        graph["6"]["inputs"].update(width=512, height=512)
        graph["7"]["inputs"]["steps"] = 25

    log_path = opts.output / "r2moe_demo_server.log"
    started = time.monotonic()
    with ComfyServer(output_dir=opts.output, log_path=log_path, tiny_models=tiny) as server:
        boot_s = time.monotonic() - started
        info = server.get("/object_info")
        ours = sorted(n for n in info if n.startswith("R2MoE"))
        t0 = time.monotonic()
        entry = server.run(graph)
        run_s = time.monotonic() - t0
    images = [
        opts.output / img["subfolder"] / img["filename"]
        for node in ("9", "11")
        for img in entry["outputs"][node]["images"]
    ]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise SystemExit(f"ComfyUI reported images that are not on disk: {missing}")
    report = opts.output / "r2moe_demo_report.md"
    bank_text = entry["outputs"]["10"]["text"][0]
    report.write_text(
        "# R2MoE demo run\n\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        f"- checkpoint: {ckpt_name} ({'built-in tiny SD1.5-layout model, random weights' if tiny else 'yours'})\n"
        f"- device: {'GPU' if server.gpu else 'CPU'}; server start {boot_s:.1f} s, workflow {run_s:.1f} s\n"
        f"- R2MoE nodes listed by /object_info: {', '.join(ours)}\n"
        f"- workflow: {WORKFLOW.relative_to(REPO)}\n"
        f"- images:\n" + "".join(f"  - {p}\n" for p in images)
        + f"\n## Bank\n\n```\n{bank_text}\n```\n"
    )
    LOG.info("R2MoE demo finished in %.1f s.", run_s)
    LOG.info("Images: %s", ", ".join(str(p) for p in images))
    LOG.info("Report: %s", report)


if __name__ == "__main__":
    main()
