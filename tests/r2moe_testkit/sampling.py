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


def first_call(model: Any, clip: Any, positive: str, negative: str = "", cfg: float = 1.0,
               size: int = 128) -> dict[int, torch.Tensor]:
    """Denoiser output of the first UNet call of a 1-step run, per chunk kind (0 = cond, 1 = uncond)."""
    record: dict[int, torch.Tensor] = {}
    probe = model.clone()

    def wrapper(apply_model: Any, args: dict[str, Any]) -> torch.Tensor:
        out = apply_model(args["input"], args["timestep"], **args["c"])
        if not record:
            kinds = args["cond_or_uncond"]
            for kind, chunk in zip(kinds, out.chunk(len(kinds)), strict=True):
                record[kind] = chunk.clone()
        return out

    probe.set_model_unet_function_wrapper(wrapper)
    sample(probe, clip, positive, negative=negative, steps=1, cfg=cfg, size=size)
    return record


def find_runtime(model: Any) -> Any:
    """The BankRuntime behind the R2MoE wrapper installed on a patched MODEL."""
    import comfy.patcher_extension

    wrappers = model.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {})
    for key, items in wrappers.items():
        if key.startswith("r2moe_"):
            return items[0].runtime
    raise AssertionError("no R2MoE wrapper on this model")
