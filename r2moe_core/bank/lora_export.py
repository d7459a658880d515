"""Experts as standard LoRA files (kohya key names), readable by ComfyUI's LoraLoader and other tools."""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from .expert_bank import ExpertBank


def lora_key(projection: str) -> str:
    """`input_blocks.1.1.transformer_blocks.0.attn2.to_k` -> `lora_unet_input_blocks_1_1_..._attn2_to_k`."""
    return "lora_unet_" + projection.replace(".", "_")


def expert_as_lora(bank: ExpertBank, task: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """One task's expert, at a fixed coefficient `scale`, as a plain LoRA state dict (ΔW = scale · up^T down^T)."""
    out: dict[str, torch.Tensor] = {}
    for name, proj in bank.projections.items():
        expert = proj.experts.get(task)
        if expert is None:
            continue
        key = lora_key(name)
        out[f"{key}.lora_down.weight"] = expert.down.T.contiguous().float()
        out[f"{key}.lora_up.weight"] = (expert.up.T * scale).contiguous().float()
        out[f"{key}.alpha"] = torch.tensor(float(expert.rank))
    if not out:
        raise InvalidInputError(f"Task {task} has no expert left in any layer of this bank (all pruned?).")
    return out
