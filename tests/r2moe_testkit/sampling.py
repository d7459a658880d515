"""Sampling through the stock nodes, with fixed seeds, so outputs can be compared bit for bit."""

from __future__ import annotations

from typing import Any

import torch
from comfy_inprocess import call_node


def encode(clip: Any, text: str) -> Any:
    return call_node("CLIPTextEncode", clip=clip, text=text)[0]


def sample(
    model: Any,
    clip: Any,
    prompt: str,
    negative: str = "",
    steps: int = 3,
    cfg: float = 7.0,
    seed: int = 0,
    size: int = 128,
) -> torch.Tensor:
    latent = call_node("EmptyLatentImage", width=size, height=size, batch_size=1)[0]
    out = call_node(
        "KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
        positive=encode(clip, prompt), negative=encode(clip, negative), latent_image=latent, denoise=1.0,
    )[0]
    return out["samples"].clone()


def find_runtime(model: Any) -> Any:
    """The BankRuntime behind the R2MoE wrapper installed on a patched MODEL."""
    import comfy.patcher_extension

    wrappers = model.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {})
    for key, items in wrappers.items():
        if key.startswith("r2moe_"):
            return items[0].runtime
    raise AssertionError("no R2MoE wrapper on this model")
