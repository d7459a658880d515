"""The world sampler's arithmetic: with an exact denoiser, Euler lands on the clean latent."""

from __future__ import annotations

import torch
from world.sampler import LATENT, sample, schedule, sigma_at


def test_exact_denoiser_reaches_the_clean_latent():
    target = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(1))

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


def test_cached_context_kv_samples_the_same_and_widths_reload():
    """K/V computed once per context give the very numbers of per-step K/V, with and without an expert delta;
    a UNet rebuilt from its weights has the same width (world checkpoints come in 32 and 64 channels)."""
    from world.unet import UNet

    torch.manual_seed(0)
    unet = UNet(model_channels=64, channel_mult=(1, 1, 2, 2)).eval()
    assert UNet.from_state_dict(unet.state_dict()).model_channels == 64
    gen = torch.Generator().manual_seed(2)
    context, empty = torch.randn(2, 77, 768, generator=gen), torch.randn(1, 77, 768, generator=gen)
    calls = []

    def delta(name, ctx):
        calls.append(name)
        return 0.1 * ctx[..., : unet.get_submodule(name.rsplit(".", 1)[0]).to_k.out_features]

    def eps(x, t, c):
        return unet(x, t, c, delta if c is context else None)

    with torch.no_grad():
        plain = sample(eps, context, empty, steps=4, cfg=3.0)
        per_step = len(calls)
        calls.clear()
        with unet.fixed_contexts():
            cached = sample(eps, context, empty, steps=4, cfg=3.0)
    assert torch.equal(plain, cached)
    assert len(calls) == per_step // 4, "the delta runs once per layer, not once per step"
    assert all(m.kv_cache is None for m in unet.modules() if hasattr(m, "kv_cache")), "the cache ends with the block"
