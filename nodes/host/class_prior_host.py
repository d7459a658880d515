"""Class-prior latents on a ComfyUI MODEL/CLIP: the stock sampler draws `photo of a {class}`, cached on disk."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import comfy.model_management
import comfy.sample
import torch

from ...r2moe_core.train.class_prior import PriorCache, PriorData, PriorKey, prior_prompt
from .model_folders import class_prior_dir
from .model_inspection import model_fingerprint

if TYPE_CHECKING:  # ComfyUI's own classes, for the annotations only
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP

SAMPLER, SCHEDULER, STEPS, CFG = "euler", "normal", 25, 6.0


def _patch_signature(patcher: ModelPatcher) -> str:
    """LoRAs and other weight patches on a patcher, by key and strength (their contents are not hashed)."""
    patches = getattr(patcher, "patches", {}) or {}
    return repr(sorted((k, [round(float(p[0]), 6) for p in v]) for k, v in patches.items()))


def prior_key(model: ModelPatcher, clip: CLIP, class_word: str, resolution: int) -> PriorKey:
    """The cache key: the base model's K/V fingerprint, its weight patches and the CLIP's, class, size, sampler."""
    _, fingerprint = model_fingerprint(model)
    digest = hashlib.sha256()
    digest.update(fingerprint.digest.encode())
    digest.update(_patch_signature(model).encode())
    digest.update(_patch_signature(getattr(clip, "patcher", None)).encode())
    return PriorKey(digest.hexdigest(), class_word, resolution, f"{SAMPLER}/{SCHEDULER}/{STEPS} steps/cfg {CFG}")


def _conditioning(clip: CLIP, text: str) -> list:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def class_prior(
    model: ModelPatcher,
    clip: CLIP,
    class_word: str,
    resolution: int,
    count: int,
    weight: float,
    on_progress: Callable[[int, int], None] | None = None,
) -> PriorData:
    """`count` class-prior latents in the training space (process_latent_in), from the cache when it has them."""
    key = prior_key(model, clip, class_word, resolution)
    prompt = prior_prompt(class_word)
    latent_format = model.model.latent_format
    channels = getattr(latent_format, "latent_channels", 4)
    side = resolution // 8
    conds: list[list] = []

    def generate(first: int, n: int) -> torch.Tensor:
        if not conds:
            conds.extend([_conditioning(clip, prompt), _conditioning(clip, "")])
        out = []
        for seed in range(first, first + n):
            comfy.model_management.throw_exception_if_processing_interrupted()
            empty = torch.zeros(1, channels, side, side)
            noise = comfy.sample.prepare_noise(empty, seed)
            samples = comfy.sample.sample(
                model, noise, STEPS, CFG, SAMPLER, SCHEDULER, conds[0], conds[1], empty,
                disable_pbar=True, seed=seed,
            )
            out.append(model.model.process_latent_in(samples.float().cpu()))
        return torch.cat(out)

    latents = PriorCache(class_prior_dir()).get(key, count, generate, on_progress)
    return PriorData(latents, prompt, weight)
