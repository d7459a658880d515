"""Sampling the world model without ComfyUI: Euler steps on the SD1.x schedule with classifier-free guidance,
the same arithmetic as ComfyUI's `euler` sampler with the `normal` scheduler for an ε-prediction model."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .vocab import SIZE

LATENT = SIZE // 8  # latent side of the world's images (8 for world v2's 64 px, 16 for v3's 128 px)

LATENT_SCALE = 0.18215


def ddpm_sigmas(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """σ_t = sqrt((1-ᾱ_t)/ᾱ_t) of the SD1.x schedule (betas linear in sqrt space, as in latent diffusion)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def sigma_at(t: torch.Tensor) -> torch.Tensor:
    """σ for fractional timesteps, interpolated in log space as ComfyUI's model_sampling does."""
    table = ddpm_sigmas()
    low, high, frac = t.floor().long(), t.ceil().long(), t - t.floor()
    return ((1 - frac) * table[low].log() + frac * table[high].log()).exp()


def schedule(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, sigmas) from t=999 down to 0 in `steps` even steps, sigmas with a final 0."""
    t = torch.linspace(len(ddpm_sigmas()) - 1, 0, steps)
    return t, torch.cat([sigma_at(t), torch.zeros(1)])


Eps = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_in, t) -> ε̂
Switch = tuple[int, Callable[[torch.Tensor], None]]  # (step index, callback(x0 estimate))


@torch.no_grad()
def euler_cfg(cond: Eps, uncond: Eps, batch: int, steps: int, cfg: float, seed: int, latent_size: int = LATENT,
              switch: Switch | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """Latents [batch, 4, s, s] (already multiplied by the SD latent scale); `switch` sees one step's x0 estimate
    (the regional sampler refines its masks there). The starting noise is drawn on the CPU whatever `device`, so
    a seed gives the same picture on either."""
    gen = torch.Generator().manual_seed(seed)
    timesteps, sigmas = schedule(steps)
    x = (torch.randn(batch, 4, latent_size, latent_size, generator=gen) * sigmas[0]).to(device)
    for i, t in enumerate(timesteps):
        sigma = sigmas[i]
        x_in = x / (sigma**2 + 1).sqrt()
        tt = t.expand(batch).to(device)
        e_cond, e_uncond = cond(x_in, tt), uncond(x_in, tt)
        e = e_uncond + cfg * (e_cond - e_uncond)
        if switch is not None and i == switch[0]:
            switch[1](x - sigma * e)  # ε-prediction: x_t = x0 + σε
        x = x + e * (sigmas[i + 1] - sigma)  # Euler: d = (x - denoised) / σ = ε
    return x


def sample(
    eps: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    context: torch.Tensor,
    empty: torch.Tensor,
    steps: int = 20,
    cfg: float = 5.0,
    seed: int = 0,
    latent_size: int = LATENT,
) -> torch.Tensor:
    """Latents [B, 4, s, s] (already multiplied by the SD latent scale) for contexts [B, 77, D], on their device."""
    uncond = empty.expand_as(context)
    return euler_cfg(lambda x, t: eps(x, t, context), lambda x, t: eps(x, t, uncond), context.shape[0], steps, cfg,
                     seed, latent_size, device=context.device)
