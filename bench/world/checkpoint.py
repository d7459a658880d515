"""World checkpoints: the shipped file holds the UNet and VAE (fp16, ComfyUI key layout); the text encoder is
random from a seed stored in the metadata and rebuilt here, rounded to fp16 as ComfyUI would load it."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .text import TextEncoder, random_text_encoder
from .unet import UNet
from .vae import WorldVAE
from .vocab import SIZE

# The shipped world, v3 (128 px). World v2 (64 px) left the tree when v3 replaced it; the benchmark results made on
# it name it, and `git show 8f545f5:bench/world/weights/world_sd15.safetensors > world_v2.safetensors` restores it
# (read it with R2MOE_WORLD_SIZE=64 and --checkpoint).
WEIGHTS = {128: "world_v3.safetensors"}
SHIPPED = Path(__file__).resolve().parent / "weights" / WEIGHTS[128]
TEXT_PREFIX = "cond_stage_model.transformer."


def text_recipe(path: Path) -> tuple[int, int] | None:
    """(seed, init) of the text encoder a checkpoint was trained with; checkpoints without an init key are v1."""
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
    seed = meta.get("r2moe_world_text_seed")
    return None if seed is None else (int(seed), int(meta.get("r2moe_world_text_init", 1)))


def trained_size(path: Path) -> int | None:
    """The pixel size a world was trained at, where its file records it (checkpoints since world v3's chunks)."""
    with safe_open(str(path), "pt") as handle:
        size = (handle.metadata() or {}).get("r2moe_world_size")
    return None if size is None else int(size)


def full_state(path: Path = SHIPPED) -> dict[str, torch.Tensor]:
    """Every tensor of the full checkpoint (fp16), the text encoder rebuilt from its seed when not stored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"world checkpoint {path} not found; `python bench/pretrain_world.py` writes it.")
    state = load_file(str(path))
    recipe = text_recipe(path)
    if recipe is not None and not any(k.startswith("cond_stage_model.") for k in state):
        text = random_text_encoder(*recipe)
        state |= {TEXT_PREFIX + k: v.to(torch.float16).contiguous() for k, v in text.state_dict().items()}
    return state


def assemble(path: Path, out: Path) -> Path:
    """Write the full checkpoint the stock CheckpointLoaderSimple reads (atomically)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(full_state(path), str(tmp), metadata={"r2moe_world_source": Path(path).name})
    tmp.replace(out)
    return out


def load_world(path: Path = SHIPPED, size: int = SIZE) -> tuple[UNet, TextEncoder, WorldVAE]:
    """The world's three models; refuses a world trained at another size than the one it will be drawn at (an
    evaluation at the wrong size reads every attribute near chance and says nothing of the model)."""
    trained = trained_size(Path(path)) if Path(path).is_file() else None
    if trained is not None and trained != size:
        raise ValueError(f"{Path(path).name} was trained at {trained} px but the benchmark runs at {size} px: set "
                         f"R2MOE_WORLD_SIZE={trained} (or pass its size).")
    state = {k: v.float() for k, v in full_state(path).items()}

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    unet, text, vae = UNet.from_state_dict(part("model.diffusion_model.")), TextEncoder(), WorldVAE()
    text.load_comfy_state_dict(state)
    vae.load_state_dict(part("first_stage_model."))
    return unet.eval(), text.eval(), vae.eval()
