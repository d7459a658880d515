"""The denoising error a concept's training should lower, measured through the model's own sampling."""

from __future__ import annotations

import sys
from typing import Any

import torch
from comfy_inprocess import call_node

from r2moe_testkit.sampling import encode


def pictures(seed: int, n: int = 4, size: int = 96) -> torch.Tensor:
    """A few photos of one blocky 'concept' with a little per-photo noise ([n, size, size, 3] in 0..1)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, size // 8, size // 8, 3, generator=gen).repeat_interleave(8, 1).repeat_interleave(8, 2)
    return (base + 0.05 * torch.rand(n, size, size, 3, generator=gen)).clamp(0, 1)


def resized(host: Any, images: torch.Tensor, size: int) -> torch.Tensor:
    """Photos [n, H, W, 3] as the square `size`-pixel crops training uses."""
    return torch.stack([host.core.square_resize(i, size) for i in images])


def denoise_error(host: Any, models: tuple, bank: Any, pixels: torch.Tensor, prompt: str) -> float:
    """Mean ε-prediction MSE on `pixels` at σ = 0.5, 2 and 6 through the model's own sampling (v-prediction and
    SDXL's pooled/size conditioning included), the bank applied."""
    model, clip, vae = models
    training_host = sys.modules[host.pack.__name__ + ".nodes.host.training_host"]
    patched, patched_clip = call_node("R2MoEApplyBank", model=model, clip=clip, bank=bank, strength=1.0)
    with torch.inference_mode():
        x0 = model.model.process_latent_in(vae.encode(pixels)).float()
        cond = encode(patched_clip, prompt)[0]
        pooled = cond[1].get("pooled_output")
        condition = training_host.TextCondition(
            cond[0].repeat(len(x0), 1, 1), None if pooled is None else pooled.repeat(len(x0), 1)
        )
        predict, gen, errors = training_host.noise_predictor(patched), torch.Generator().manual_seed(11), []
        for sigma in (0.5, 2.0, 6.0):
            noise = torch.randn(x0.shape, generator=gen)
            eps = predict(x0 + sigma * noise, torch.full((len(x0),), sigma), condition)
            errors.append(torch.nn.functional.mse_loss(eps.float().cpu(), noise).item())
    return sum(errors) / len(errors)
