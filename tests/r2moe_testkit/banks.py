"""Synthetic banks with known experts, built through the public core API (works with any copy of the core)."""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

import torch


def add_random_concept(
    core: ModuleType,
    bank,
    name: str,
    token: str,
    seed: int,
    scale: float = 0.05,
    projections: list[str] | None = None,
    embedding: torch.Tensor | None = None,
):
    """Add a concept whose expert has random non-zero weights in `projections` (default: all)."""
    gen = torch.Generator().manual_seed(seed)
    task = bank.num_tasks + 1
    rank = bank.config.rank
    names = bank.projection_names() if projections is None else projections
    updated = {}
    for layer in bank.layers:
        for proj_name in layer.projection_names():
            proj = bank.projections[proj_name]
            experts = dict(proj.experts)
            if proj_name in names:
                experts[task] = core.LoraExpert(
                    down=torch.randn(layer.in_dim, rank, generator=gen) * scale,
                    up=torch.randn(rank, layer.out_dim, generator=gen) * scale,
                    gate=torch.randn(layer.in_dim, generator=gen) * 0.05,
                )
            updated[proj_name] = replace(proj, experts=experts)
    concept = core.Concept(
        name=name,
        token=token,
        class_word="thing",
        task=task,
        embedding=embedding if embedding is not None else torch.randn(1, bank.token_dim, generator=gen) * 0.02,
        gate_input=torch.randn(bank.layers[0].in_dim, generator=gen),
    )
    return bank.with_concept(concept, updated)


def force_coefficient_one(bank, task: int, gate_in: torch.Tensor):
    """Gate columns that give expert `task` a softmax weight of exactly 1.0 (in fp32) for gate input `gate_in`."""
    direction = gate_in.float() / gate_in.float().square().sum()
    projections = {}
    for name, proj in bank.projections.items():
        experts = {
            i: replace(e, gate=200.0 * direction if i == task else torch.zeros_like(e.gate))  # exp(-200) == 0
            for i, e in proj.experts.items()
        }
        projections[name] = replace(proj, experts=experts)
    return replace(bank, projections=projections)


def write_kohya_lora(core: ModuleType, bank, path, seed: int = 11, rank: int = 4, scale: float = 0.1) -> None:
    """A LoRA in kohya's key names (`lora_unet_<layer>_to_k`, as kohya's trainers write them) on every K/V
    projection of the bank's layers, random and seeded, alpha = rank."""
    from safetensors.torch import save_file

    gen, tensors = torch.Generator().manual_seed(seed), {}
    for layer in bank.layers:
        for proj in core.PROJECTIONS:
            key = "lora_unet_" + f"{layer.name}.{proj}".replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_dim, generator=gen) * scale
            tensors[f"{key}.lora_up.weight"] = torch.randn(layer.out_dim, rank, generator=gen) * scale
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
