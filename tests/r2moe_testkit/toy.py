"""A toy text-to-latent world for core training tests: a small cross-attention denoiser with the same K/V
projection layout as the bank's layers, and a toy text encoder whose trigger-token vector is trainable."""

from __future__ import annotations

import zlib

import torch


class ToyTextEncoder(torch.nn.Module):
    """Words -> fixed random vectors; the trigger word -> a given (trainable) vector; one contextualising layer."""

    def __init__(self, dim: int = 16, tokens: int = 8, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.dim, self.tokens = dim, tokens
        self.mix = torch.nn.Linear(dim, dim)
        with torch.no_grad():
            self.mix.weight.copy_(torch.randn(dim, dim, generator=gen) / dim**0.5)
            self.mix.bias.zero_()
        self.requires_grad_(False)

    def word(self, w: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(zlib.crc32(w.encode()))
        return torch.randn(self.dim, generator=gen)

    def forward(self, captions: list[str], triggers: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = []
        for caption in captions:
            vecs = [triggers[w][0] if w in triggers else self.word(w) for w in caption.split()][: self.tokens]
            vecs += [self.word("<pad>")] * (self.tokens - len(vecs))
            x = torch.stack(vecs)
            rows.append(x + torch.tanh(self.mix(x.mean(0, keepdim=True))))
        return torch.stack(rows)


class ToyDenoiser(torch.nn.Module):
    """ε-prediction: latent pixels attend to the text through K/V projections shaped like the bank's layers."""

    def __init__(self, layers: list, channels: int = 4, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.layers = layers
        self.q = torch.nn.ParameterList()
        self.k = torch.nn.ParameterList()
        self.v = torch.nn.ParameterList()
        self.o = torch.nn.ParameterList()
        for layer in layers:
            for params, rows, cols in (
                (self.q, channels, layer.out_dim),
                (self.k, layer.in_dim, layer.out_dim),
                (self.v, layer.in_dim, layer.out_dim),
                (self.o, layer.out_dim, channels),
            ):
                params.append(torch.nn.Parameter(torch.randn(rows, cols, generator=gen) / rows**0.5))
        self.requires_grad_(False)

    def weights(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.layers):
            out[f"{layer.name}.to_k"] = self.k[i].T
            out[f"{layer.name}.to_v"] = self.v[i].T
        return out

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, delta=None) -> torch.Tensor:
        b, c, h, w = x.shape
        hidden = (x / (sigma.view(-1, 1, 1, 1) ** 2 + 1).sqrt()).flatten(2).transpose(1, 2)  # [B, HW, C]
        for i, layer in enumerate(self.layers):
            k = context @ self.k[i]
            v = context @ self.v[i]
            if delta is not None:
                k = k + delta(f"{layer.name}.to_k", context)
                v = v + delta(f"{layer.name}.to_v", context)
            q = hidden @ self.q[i]
            attn = torch.softmax(q @ k.transpose(1, 2) / layer.out_dim**0.5, dim=-1)
            hidden = hidden + (attn @ v) @ self.o[i]
        return hidden.transpose(1, 2).reshape(b, c, h, w)
