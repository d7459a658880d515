"""A three-layer stand-in for the SD1.x layout, small enough for pure-core unit tests."""

from __future__ import annotations

import torch

import r2moe_core as core

NAMES = [
    "input_blocks.1.1.transformer_blocks.0.attn2",
    "middle_block.1.transformer_blocks.0.attn2",
    "output_blocks.9.1.transformer_blocks.0.attn2",
]


def small_layers(in_dim: int = 16, widths: tuple[int, ...] = (8, 12, 8)) -> list:
    return [core.LayerSpec(name=n, in_dim=in_dim, out_dim=w) for n, w in zip(NAMES, widths, strict=True)]


def weights_for(layers: list, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"{layer.name}.{p}": torch.randn(layer.out_dim, layer.in_dim, generator=gen)
        for layer in layers
        for p in core.PROJECTIONS
    }
