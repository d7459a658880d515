"""Where the development host lives (installed by `make env`)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST_ROOT = REPO / ".host" / "ComfyUI"
CACHE = REPO / ".host" / "cache"
TINY_CKPT_NAME = "r2moe_tiny_sd15.safetensors"


def require_host() -> Path:
    if not (HOST_ROOT / "main.py").exists():
        raise RuntimeError(f"ComfyUI host not found at {HOST_ROOT}; run `make env` (or `make test`) first.")
    return HOST_ROOT


def make_base_dir(base: Path, checkpoint: Path | None = None) -> Path:
    """A ComfyUI base directory with only this pack in custom_nodes and the given checkpoint linked in."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "r2moe"
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    for folder in ("checkpoints", "r2moe", "sams", "loras", "embeddings"):
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
    for folder in ("input", "output", "temp", "user"):
        (base / folder).mkdir(exist_ok=True)
    if checkpoint is not None:
        target = base / "models" / "checkpoints" / checkpoint.name
        if not target.exists():
            target.symlink_to(checkpoint)
    return base
