"""The world sampler's arithmetic: with an exact denoiser, Euler lands on the clean latent."""

from __future__ import annotations

import torch
from world.sampler import sample, schedule, sigma_at


def test_exact_denoiser_reaches_the_clean_latent():
    target = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def oracle(x_in, t, context):
        sigma = sigma_at(t).view(-1, 1, 1, 1)
        x = x_in * (sigma**2 + 1).sqrt()
        return (x - target) / sigma

    out = sample(oracle, torch.zeros(2, 77, 8), torch.zeros(1, 77, 8), steps=10, cfg=3.0)
    assert torch.allclose(out, target, atol=1e-4)


def test_schedule_runs_from_the_largest_sigma_to_zero():
    t, sigmas = schedule(20)
    assert t[0] == 999 and t[-1] == 0 and sigmas[-1] == 0 and (sigmas[:-1].diff() < 0).all()
    assert 14.0 < sigmas[0] < 15.0  # SD1.x: σ_max ≈ 14.61
