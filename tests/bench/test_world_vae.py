"""The benchmark's VAE is ComfyUI's TAESD: same keys, same latents and images for the same weights."""

from __future__ import annotations

import torch
from world.vae import WorldVAE


def test_same_weights_same_latents_and_images_as_comfyui(host, tiny):
    vae = tiny[2]
    ours = WorldVAE()
    missing, unexpected = ours.load_state_dict(vae.first_stage_model.state_dict(), strict=False)
    assert not missing and not unexpected, (missing[:3], unexpected[:3])
    pixels = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = vae.encode(pixels).float()
        decoded = vae.decode(expected).float()
    with torch.no_grad():
        got = ours.encode(pixels.permute(0, 3, 1, 2))
        images = ours.decode(got).permute(0, 2, 3, 1)
    assert got.shape == (2, 4, 8, 8) and torch.allclose(got, expected, atol=1e-4)
    assert torch.allclose(images, decoded, atol=1e-3)
