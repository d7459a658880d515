"""The benchmark's VAE: the TAESD layout (8x downsampling, 4 latent channels) in plain PyTorch.

ComfyUI recognises a checkpoint's VAE as TAESD by its `taesd_decoder.*` keys, so weights trained here load
through the stock loaders with the rest of the world model.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def _stage(down: bool) -> list[nn.Module]:
    if down:
        return [_conv(64, 64, stride=2, bias=False), _Block(64, 64), _Block(64, 64), _Block(64, 64)]
    return [_Block(64, 64), _Block(64, 64), _Block(64, 64), nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]


class WorldVAE(nn.Module):
    def __init__(self, latent_channels: int = 4) -> None:
        super().__init__()
        self.taesd_encoder = nn.Sequential(_conv(3, 64), _Block(64, 64), *_stage(True), *_stage(True),
                                           *_stage(True), _conv(64, latent_channels))
        self.taesd_decoder = nn.Sequential(_Clamp(), _conv(latent_channels, 64), nn.ReLU(), *_stage(False),
                                           *_stage(False), *_stage(False), _Block(64, 64), _conv(64, 3))
        self.vae_scale = nn.Parameter(torch.tensor(1.0))
        self.vae_shift = nn.Parameter(torch.tensor(0.0))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> latents [B, 4, H/8, W/8] (what ComfyUI's VAE.encode returns)."""
        return self.taesd_encoder(images) / self.vae_scale + self.vae_shift

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images [B, 3, H, W] in [0, 1]."""
        return self.taesd_decoder((latents - self.vae_shift) * self.vae_scale).clamp(0, 1)
