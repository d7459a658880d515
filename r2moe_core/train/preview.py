"""A look at the concept while it learns: its own prompt drawn with the current experts, gate and token.

Euler steps on the frozen model's σ table (the training noise levels, `sigmas` ascending), classifier-free
guidance against the empty prompt, a fixed seed, a small latent: the same picture at every preview, so the
previews differ only in what training changed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .step import Encode, PredictNoise

PREVIEW_STEPS = 12
PREVIEW_CFG = 5.0


@dataclass(frozen=True)
class PreviewSettings:
    """every: steps between previews; one is always drawn at the end (the node's output). shape: latent [C, h, w]."""

    every: int
    prompt: str
    shape: tuple[int, int, int]
    seed: int = 0
    steps: int = PREVIEW_STEPS
    cfg: float = PREVIEW_CFG

    def due(self, step: int, last: int) -> bool:
        return step == last or (self.every > 0 and step % self.every == 0)


# (training step, draw): `draw()` samples the preview latent [1, C, h, w] (CPU) now, so the hook can time it
PreviewHook = Callable[[int, Callable[[], torch.Tensor]], None]


def schedule(sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` + 1 noise levels from the largest training σ down to 0, evenly spaced over the σ table."""
    table = sigmas.float().sort().values
    picks = torch.linspace(len(table) - 1, 0, steps).round().long()
    return torch.cat([table[picks], table.new_zeros(1)])


@torch.no_grad()
def preview_latent(predict_noise: PredictNoise, encode: Encode, sigmas: torch.Tensor, settings: PreviewSettings,
                   device: torch.device) -> torch.Tensor:
    """[1, C, h, w]: the prompt sampled with the trainable state as it is now (x_t = x0 + σ·ε, as in training)."""
    levels = schedule(sigmas, settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    x = (torch.randn((1, *settings.shape), generator=generator) * levels[0]).to(device)
    contexts = encode([settings.prompt, ""])
    for sigma, following in itertools.pairwise(levels):
        s = sigma.to(device).expand(2)
        eps = predict_noise(torch.cat([x, x]), s, contexts).float()
        guided = eps[1:] + settings.cfg * (eps[:1] - eps[1:])
        x = x + guided * (following - sigma).to(device)
    return x.cpu()
