"""What the pack reads off a ComfyUI MODEL and CLIP: the cross-attention layers, their K/V weights, the token
width; and the one check every node runs before it uses a bank with them (the decisions live in the core)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...r2moe_core.bank.attention_targets import LayerSpec, block_key
from ...r2moe_core.bank.compatibility import check_bank_fits, check_token_width
from ...r2moe_core.bank.expert_bank import ExpertBank
from ...r2moe_core.bank.fingerprint import ModelFingerprint, compute_fingerprint
from ...r2moe_core.errors import InvalidInputError
from ...r2moe_core.log import LOGGER

if TYPE_CHECKING:  # ComfyUI's own classes, for the annotations only
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP


def _unpatched_weight(model: ModelPatcher, key: str, param: torch.Tensor) -> torch.Tensor:
    # A loaded ModelPatcher keeps LoRA-merged weights in place and the originals in `backup`.
    backup = getattr(model, "backup", {}).get(key)
    return getattr(backup, "weight", param) if backup is not None else param


def cross_attention_layers(model: ModelPatcher) -> tuple[list[LayerSpec], dict[str, torch.Tensor]]:
    """Every text cross-attention layer of the UNet and its base K/V weights (keys `<layer>.to_k|to_v`)."""
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is None:
        raise InvalidInputError("The MODEL input is not a diffusion model patcher; connect a checkpoint's MODEL.")
    layers, weights = [], {}
    for name, module in unet.named_modules():
        if not name.endswith("attn2") or not hasattr(module, "to_k") or not hasattr(module, "to_v"):
            continue
        try:
            block_key(name)
        except InvalidInputError:
            continue  # not the SD1.x block layout (e.g. video or DiT models): not adaptable here
        wk, wv = module.to_k.weight, module.to_v.weight
        layers.append(LayerSpec(name=name, in_dim=int(wk.shape[1]), out_dim=int(wk.shape[0])))
        for proj, param in (("to_k", wk), ("to_v", wv)):
            weights[f"{name}.{proj}"] = _unpatched_weight(model, f"diffusion_model.{name}.{proj}.weight", param)
    if not layers:
        raise InvalidInputError(
            "No text cross-attention layers found in this MODEL. R2MoE supports SD1.x, SD 2.x and SDXL UNets "
            "and their fine-tunes."
        )
    return layers, weights


def model_fingerprint(model: ModelPatcher) -> tuple[list[LayerSpec], ModelFingerprint]:
    layers, weights = cross_attention_layers(model)
    return layers, compute_fingerprint(layers, weights)


def token_encoders(clip: CLIP) -> list[tuple[str, int]]:
    """(embedding key, width) of each text encoder behind this CLIP's tokenizer, in the tokenizer's order
    (SD1.x: clip_l 768; SD 2.x: clip_h 1024; SDXL: clip_l 768 and clip_g 1280)."""
    tokenizer = getattr(clip.tokenizer, "base", clip.tokenizer)
    found = []
    for value in vars(tokenizer).values():
        size = getattr(value, "embedding_size", None)
        if size:
            found.append((str(getattr(value, "embedding_key", "")), int(size)))
    return found


def token_dim(clip: CLIP) -> int:
    """Width of a trigger-token vector for this CLIP: its encoders' embedding widths side by side."""
    return sum(width for _, width in token_encoders(clip)) or 768


def check_clip_serves(bank: ExpertBank, clip: CLIP, new_concept: bool = False) -> None:
    """Raise unless this CLIP's token embeddings are as wide as the bank's concept tokens."""
    check_token_width(bank, token_dim(clip), new_concept)


def check_bank_serves(
    bank: ExpertBank, model: ModelPatcher, clip: CLIP | None = None, allow_other_weights: bool = False,
    new_concept: bool = False,
) -> None:
    """Raise unless the bank fits this MODEL (and CLIP); a tolerated weight mismatch is logged as a warning."""
    layers, fingerprint = model_fingerprint(model)
    for warning in check_bank_fits(bank, layers, fingerprint, allow_other_weights):
        LOGGER.warning("R2MoE: %s", warning)
    if clip is not None:
        check_clip_serves(bank, clip, new_concept)
