"""Loading a world checkpoint (ComfyUI key layout, fp16) into the plain-PyTorch parts."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .text import TextEncoder
from .unet import UNet
from .vae import WorldVAE

SHIPPED = Path(__file__).resolve().parent / "weights" / "world_sd15.safetensors"


def load_world(path: Path = SHIPPED) -> tuple[UNet, TextEncoder, WorldVAE]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"world checkpoint {path} not found; `python bench/pretrain_world.py` writes it.")
    state = {k: v.float() for k, v in load_file(str(path)).items()}

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    unet, text, vae = UNet(), TextEncoder(), WorldVAE()
    unet.load_state_dict(part("model.diffusion_model."))
    text.load_comfy_state_dict(state)
    vae.load_state_dict(part("first_stage_model."))
    return unet.eval(), text.eval(), vae.eval()
