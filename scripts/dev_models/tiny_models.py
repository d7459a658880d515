"""Tiny SD1.5-, SD 2.x- and SDXL-layout models for tests and the demo, built deterministically (never downloaded).

Each UNet keeps its family's real cross-attention layout (SD1.x and SD 2.x: 16 layers; SDXL: 70) and text-context
width (768, 1024, 2048) at a fraction of the channels; the text encoders keep their real widths (CLIP-L 768,
OpenCLIP-H 1024, CLIP-L + OpenCLIP-bigG 768 + 1280) with 2 layers and ComfyUI's bundled tokenizers; the VAE is
TAESD-shaped. The SD 2.x model is a v-prediction model, detected as one by the stock loader. Stock ComfyUI cannot
detect such checkpoints (it requires model_channels 320), so `register()` adds supported-model classes that
match only these configurations; the development custom node beside this file calls it when
R2MOE_TINY_MODELS=1. None of this is part of the pack a user installs.

This module imports only ComfyUI and torch (no pack-relative imports) so scripts can load it by path.
"""

from __future__ import annotations

import os

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd
import comfy.text_encoders.sd2_clip
import torch

ENV_FLAG = "R2MOE_TINY_MODELS"
CHECKPOINT_NAME = "r2moe_tiny_sd15.safetensors"
CHECKPOINT_NAMES = {
    "sd1": CHECKPOINT_NAME, "sd2": "r2moe_tiny_sd21v.safetensors", "sdxl": "r2moe_tiny_sdxl.safetensors",
}
CLIP_LAYERS = 2
CLIP_MLP = 512  # the MLP width inside the tiny text encoders (the real ones use 3072-5120); token widths stay real
# The SD 2.x loader calls a checkpoint v-prediction when this bias is spread out (std > 0.09): the builder sets it so.
V_PRED_MARKER = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
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


SD2_UNET_CONFIG = {
    **UNET_CONFIG,
    "model_channels": 64,  # SD 2.x attention uses 64-channel heads: the first level needs at least one
    "use_linear_in_transformer": True,
    "context_dim": 1024,
    "num_head_channels": 64,
    "num_heads": -1,
}
SDXL_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "num_heads": -1,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def _small_text_model(name: str) -> dict:
    # 3 layers: these encoders hand the UNet their penultimate layer, which must not be the input embedding
    return {f"{name}_model_config": {"num_hidden_layers": CLIP_LAYERS + 1, "intermediate_size": CLIP_MLP}}


class TinyClipL(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device: str = "cpu", dtype: torch.dtype | None = None, model_options: dict | None = None, **kw):
        options = {**(model_options or {}), "clip_l_model_config": {"num_hidden_layers": CLIP_LAYERS}}
        super().__init__(device=device, dtype=dtype, model_options=options, **kw)


class TinyClipH(comfy.text_encoders.sd2_clip.SD2ClipModel):
    def __init__(self, device: str = "cpu", dtype: torch.dtype | None = None, model_options: dict | None = None, **kw):
        options = {**(model_options or {}), **_small_text_model("clip_h")}
        super().__init__(device=device, dtype=dtype, model_options=options, **kw)


class TinyClipLG(comfy.sdxl_clip.SDXLClipModel):
    def __init__(self, device: str = "cpu", dtype: torch.dtype | None = None, model_options: dict | None = None):
        options = {**(model_options or {}), **_small_text_model("clip_l"), **_small_text_model("clip_g")}
        super().__init__(device=device, dtype=dtype, model_options=options)


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


class TinySD21V(comfy.supported_models.SD20):
    """Matches only model_channels 64 with a 1024-wide context."""

    unet_config = {**comfy.supported_models.SD20.unet_config, "model_channels": 64}  # noqa: RUF012 - read as is

    def clip_target(self, state_dict: dict | None = None) -> comfy.supported_models_base.ClipTarget:
        return comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd2_clip.SD2Tokenizer, TinyClipH)


class TinySDXL(comfy.supported_models.SDXL):
    """Matches only model_channels 32 with SDXL's 70-layer layout and 2048-wide context."""

    unet_config = {**comfy.supported_models.SDXL.unet_config, "model_channels": 32}  # noqa: RUF012 - read as is

    def clip_target(self, state_dict: dict | None = None) -> comfy.supported_models_base.ClipTarget:
        return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, TinyClipLG)


FAMILY_MODELS = {
    "sd1": (comfy.supported_models.SD15, UNET_CONFIG, comfy.sd1_clip.SD1Tokenizer, TinyClipL),
    "sd2": (TinySD21V, SD2_UNET_CONFIG, comfy.text_encoders.sd2_clip.SD2Tokenizer, TinyClipH),
    "sdxl": (TinySDXL, SDXL_UNET_CONFIG, comfy.sdxl_clip.SDXLTokenizer, TinyClipLG),
}


def register() -> None:
    for model in (TinySD15, WorldSD15, TinySD21V, TinySDXL):
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


def build_tiny(
    seed: int = 0, family: str = "sd1"
) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """The tiny model trio of a family ("sd1", "sd2": v-prediction, "sdxl"), identical for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    config_class, unet_config, tokenizer, text_model = FAMILY_MODELS[family]
    config = config_class(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    if family == "sd2":  # what the stock loader will detect from the marker below
        base = comfy.model_base.BaseModel(config, comfy.model_base.ModelType.V_PREDICTION, device=torch.device("cpu"))
    else:
        base = config.get_model({}, "", device=torch.device("cpu"))
    init_random(base.diffusion_model, generator, fan_in_scaled=True)
    if family == "sd2":
        with torch.no_grad():
            marker = base.diffusion_model.get_parameter(V_PRED_MARKER)
            marker.copy_(torch.randn(marker.shape, generator=generator) * 0.5)
    model = comfy.model_patcher.ModelPatcher(
        base,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(tokenizer, text_model))
    init_random(clip.cond_stage_model, generator)
    taesd = comfy.taesd.taesd.TAESD()
    init_random(taesd, generator)
    with torch.no_grad():
        taesd.vae_scale.fill_(1.0)
    vae = comfy.sd.VAE(sd=taesd.state_dict())
    return model, clip, vae


def write_tiny_checkpoint(path: str, seed: int = 0, tag: str = "", family: str = "sd1") -> str:
    """Save a tiny trio as a single checkpoint CheckpointLoaderSimple can load (after `register()`).

    `tag` (the builder's source digest) is stored so callers can tell a stale cached checkpoint."""
    model, clip, vae = build_tiny(seed, family)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    comfy.sd.save_checkpoint(tmp, model, clip, vae, metadata={"r2moe_tiny": f"seed={seed} builder={tag}"})
    os.replace(tmp, path)
    return path
