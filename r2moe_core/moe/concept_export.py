"""A concept for any SD tool: its expert mixture at one prompt as a standard LoRA (kohya key names) and its
trigger token as a textual-inversion embedding.

The mixture is what the bank applies for that prompt: in every K/V projection, ΔW = Σ_e c_e(prompt) ΔW_e over the
experts the gate selects, which is itself a LoRA of rank Σ r_e (the experts' down and up matrices stacked, each
up scaled by its coefficient). One difference stays: a merged LoRA also acts on the negative prompt, which the
bank leaves untouched, so images match exactly at CFG 1 and closely above it."""

from __future__ import annotations

import re

import torch

from ..bank.attention_targets import PROJECTIONS
from ..bank.expert_bank import ExpertBank
from ..bank.model_family import encoder_columns
from ..errors import InvalidInputError

_SD1_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)\.?(\d*)\.1\.(transformer_blocks\.\d+\..+)$")


def diffusers_path(projection: str) -> str | None:
    """The diffusers module path of an SD1.x, SD 2.x or SDXL UNet projection
    (`input_blocks.1.1.transformer_blocks.0.attn2.to_k`
    -> `down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k`), None for layouts it does not know."""
    match = _SD1_BLOCK.match(projection)
    if match is None:
        return None
    block, index, rest = match.group(1), match.group(2), match.group(3)
    if block == "middle_block":
        prefix = "mid_block.attentions.0"
    elif block == "input_blocks":
        prefix = f"down_blocks.{(int(index) - 1) // 3}.attentions.{(int(index) - 1) % 3}"
    else:
        prefix = f"up_blocks.{int(index) // 3}.attentions.{int(index) % 3}"
    return f"{prefix}.{rest}"


def kohya_lora_key(projection: str) -> str:
    """The key most SD tools read for a UNet projection (diffusers block names, as kohya's trainer writes
    them): `input_blocks.1.1.transformer_blocks.0.attn2.to_k` -> `lora_unet_down_blocks_0_attentions_0_...`.
    Layouts it does not know keep ComfyUI's own names (which ComfyUI reads too)."""
    return "lora_unet_" + (diffusers_path(projection) or projection).replace(".", "_")


def mixture_as_lora(bank: ExpertBank, weights: torch.Tensor, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """The bank's K/V deltas for one prompt as a LoRA state dict; `weights` [experts, layers, 2] are that prompt's
    mixture coefficients (`prompt_gate_weights`). Projections where no trained expert takes part are left out."""
    out: dict[str, torch.Tensor] = {}
    for col, layer in enumerate(bank.layers):
        for half, proj_name in enumerate(PROJECTIONS):
            name = f"{layer.name}.{proj_name}"
            experts = sorted(bank.projections[name].experts.items())
            parts = [(float(weights[e, col, half]), expert) for e, expert in experts if float(weights[e, col, half])]
            if not parts:
                continue
            down = torch.cat([expert.down.T.float() for _, expert in parts])  # [Σr, in]
            up = torch.cat([expert.up.T.float() * (c * strength) for c, expert in parts], dim=1)  # [out, Σr]
            key = kohya_lora_key(name)
            out[f"{key}.lora_down.weight"] = down.contiguous()
            out[f"{key}.lora_up.weight"] = up.contiguous()
            out[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))  # alpha = rank: scale 1
    return out


def embedding_tensors(bank: ExpertBank, name: str) -> dict[str, torch.Tensor]:
    """A concept's trigger token as a textual-inversion file's tensors: `emb_params` [vectors, dim] for one text
    encoder (the key ComfyUI's `embedding:` syntax and A1111 read), one tensor per encoder key for several
    (SDXL: `clip_l` [vectors, 768] and `clip_g` [vectors, 1280], as SDXL embedding files carry them)."""
    concept = bank.concept_by_name(name)
    if concept is None:
        raise InvalidInputError(f"No concept named '{name[:200]}' in this bank.")
    vectors = concept.embedding.detach().float()
    if len(bank.token_encoders) == 1:
        return {"emb_params": vectors.contiguous()}
    return {key: vectors[:, columns].contiguous() for key, columns in encoder_columns(bank.token_encoders)}


def embedding_name(token: str) -> str:
    """A file name for a trigger token (`<dog1>` -> `dog1`): what follows `embedding:` in a prompt."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", token).strip("_.")
    return cleaned or "concept"
