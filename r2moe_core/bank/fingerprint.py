"""A base model's identity, robust to the precision it was loaded in.

A bank's experts only make sense on the K/V weights they were trained against. We keep the layer shapes and,
per K/V weight, its RMS and a fixed sample of entries: a cast to fp16/bf16 moves these by well under 1%,
another checkpoint moves them by far more. Comparing with a tolerance instead of an exact hash is what lets the
same SD1.5 file loaded in fp16 on a GPU and in fp32 on a CPU share one bank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .attention_targets import PROJECTIONS, LayerSpec

SAMPLES_PER_WEIGHT = 64
_RTOL = 2e-2
_ATOL_RMS = 2e-2


@dataclass(frozen=True)
class ModelFingerprint:
    """Per adapted projection (layer order x K,V): RMS [2L] and sampled entries [2L, S]."""

    rms: torch.Tensor
    samples: torch.Tensor

    @property
    def digest(self) -> str:
        """Short display id; equal digests imply a match, unequal ones are compared with tolerance."""
        rounded = torch.cat([self.rms, self.samples.flatten()]).to(torch.float16).numpy().tobytes()
        return hashlib.sha256(rounded).hexdigest()[:16]


def _sample_positions(numel: int, count: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, numel, (count,), generator=gen)


def compute_fingerprint(layers: list[LayerSpec], weights: Mapping[str, torch.Tensor]) -> ModelFingerprint:
    """`weights` maps `<layer>.to_k` / `<layer>.to_v` to the projection's weight [out, in]."""
    rms, samples = [], []
    for index, layer in enumerate(layers):
        for p_index, proj in enumerate(PROJECTIONS):
            w = weights[f"{layer.name}.{proj}"].detach().to("cpu", torch.float32).flatten()
            rms.append(w.square().mean().sqrt())
            positions = _sample_positions(w.numel(), SAMPLES_PER_WEIGHT, seed=1009 * index + p_index)
            samples.append(w[positions])
    if not rms:
        return ModelFingerprint(torch.zeros(0), torch.zeros(0, SAMPLES_PER_WEIGHT))
    return ModelFingerprint(torch.stack(rms), torch.stack(samples))


def fingerprint_differences(expected: ModelFingerprint, actual: ModelFingerprint, layers: list[LayerSpec]) -> list[str]:
    """Names of the projections whose weights differ beyond precision noise; empty means same model."""
    if expected.samples.shape != actual.samples.shape:
        return ["<shape of the fingerprint>"]
    scale = torch.maximum(expected.rms, actual.rms).clamp_min(1e-12)
    rms_bad = (expected.rms - actual.rms).abs() > _RTOL * scale
    tol = _ATOL_RMS * scale[:, None] + _RTOL * expected.samples.abs()
    sample_bad = ((expected.samples - actual.samples).abs() > tol).any(dim=1)
    bad = (rms_bad | sample_bad).nonzero().flatten().tolist()
    names = [f"{layer.name}.{proj}" for layer in layers for proj in PROJECTIONS]
    return [names[i] for i in bad]
