"""Tiny SD1.5-layout models for tests and the demo, built deterministically here (never downloaded).

The UNet keeps the real 16 cross-attention layers of SD1.x (model_channels 32 instead of 320), the text encoder
is CLIP-L with 2 layers and ComfyUI's bundled tokenizer, the VAE is TAESD-shaped. Stock ComfyUI cannot detect
such a checkpoint (SD15 detection requires model_channels 320), so `register()` adds a supported-model class
that matches only this configuration; the development custom node beside this file calls it when
R2MOE_TINY_MODELS=1. None of this is part of the pack a user installs.

This module imports only ComfyUI and torch (no pack-relative imports) so scripts can load it by path.
"""

from __future__ import annotations

import os

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd
import torch

ENV_FLAG = "R2MOE_TINY_MODELS"
CHECKPOINT_NAME = "r2moe_tiny_sd15.safetensors"
CLIP_LAYERS = 2
UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    # consumed from the end while output blocks are built: this puts attention in output blocks 3..11, as SD1.5
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}


class TinyClipL(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device: str = "cpu", dtype: torch.dtype | None = None, model_options: dict | None = None, **kw):
        options = {**(model_options or {}), "clip_l_model_config": {"num_hidden_layers": CLIP_LAYERS}}
        super().__init__(device=device, dtype=dtype, model_options=options, **kw)


class TinySD15(comfy.supported_models.SD15):
    """Matches only model_channels 32 with a 768-wide context: no real checkpoint has that."""

    unet_config = {  # noqa: RUF012 - the host reads this class attribute as is
        "context_dim": 768,
        "model_channels": 32,
        "use_linear_in_transformer": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
    }

    def clip_target(self, state_dict: dict | None = None) -> comfy.supported_models_base.ClipTarget:
        return comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinyClipL)


class WorldSD15(TinySD15):
    """The benchmark's pretrained world model (bench/world): 64 channels at the first level, so that its last
    GroupNorm(32) sees two channels per group (with one, it erases the per-channel mean a background colour is)."""

    unet_config = {**TinySD15.unet_config, "model_channels": 64}  # noqa: RUF012 - read by the host as is


def register() -> None:
    for model in (TinySD15, WorldSD15):
        if not any(getattr(m, "__name__", "") == model.__name__ for m in comfy.supported_models.models):
            comfy.supported_models.models.insert(0, model)


def init_random(module: torch.nn.Module, generator: torch.Generator, fan_in_scaled: bool = False) -> None:
    """comfy.ops layers are created without initialisation: give every tensor a defined, seeded value.

    The UNet uses fan-in scaled weights (LeCun normal), so that every path, cross-attention included, carries
    signal to the output and a few training steps can move it; the text encoder and VAE use N(0, 0.02)."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if isinstance(sub, norms):
                    param.fill_(1.0 if name == "weight" else 0.0)
                elif param.ndim >= 2:
                    std = param[0].numel() ** -0.5 if fan_in_scaled else 0.02
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
                else:
                    param.zero_()


def build_tiny(seed: int = 0) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """The tiny model trio, identical for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    config = comfy.supported_models.SD15(dict(UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    init_random(base.diffusion_model, generator, fan_in_scaled=True)
    model = comfy.model_patcher.ModelPatcher(
        base,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, TinyClipL))
    init_random(clip.cond_stage_model, generator)
    taesd = comfy.taesd.taesd.TAESD()
    init_random(taesd, generator)
    with torch.no_grad():
        taesd.vae_scale.fill_(1.0)
    vae = comfy.sd.VAE(sd=taesd.state_dict())
    return model, clip, vae


def write_tiny_checkpoint(path: str, seed: int = 0, tag: str = "") -> str:
    """Save the tiny trio as a single checkpoint CheckpointLoaderSimple can load (after `register()`).

    `tag` (the builder's source digest) is stored so callers can tell a stale cached checkpoint."""
    model, clip, vae = build_tiny(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    comfy.sd.save_checkpoint(tmp, model, clip, vae, metadata={"r2moe_tiny": f"seed={seed} builder={tag}"})
    os.replace(tmp, path)
    return path
