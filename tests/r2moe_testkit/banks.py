"""Synthetic banks with known experts, built through the public core API (works with any copy of the core)."""

from __future__ import annotations

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
    experts, routers = {}, {}
    for layer in bank.layers:
        for proj_name in layer.projection_names():
            old = bank.projections[proj_name].router
            routers[proj_name] = torch.cat([old, torch.randn(old.shape[0], 1, generator=gen) * 0.05], dim=1)
            if proj_name in names:
                experts[proj_name] = core.LoraExpert(
                    down=torch.randn(layer.in_dim, rank, generator=gen) * scale,
                    up=torch.randn(rank, layer.out_dim, generator=gen) * scale,
                )
    concept = core.Concept(
        name=name,
        token=token,
        class_word="thing",
        task=task,
        embedding=embedding if embedding is not None else torch.randn(1, bank.token_dim, generator=gen) * 0.02,
        gate_input=torch.randn(bank.layers[0].in_dim, generator=gen),
    )
    return bank.with_concept(concept, experts, routers)


def force_coefficient_one(bank, task: int, gate_in: torch.Tensor):
    """Routers that give expert `task` a softmax weight of exactly 1.0 (in fp32) for gate input `gate_in`."""
    from dataclasses import replace

    direction = gate_in.float() / gate_in.float().square().sum()
    projections = {}
    for name, proj in bank.projections.items():
        router = torch.zeros_like(proj.router)
        router[:, task] = 200.0 * direction  # score 200 against 0 for every other expert: exp(-200) == 0 in fp32
        projections[name] = replace(proj, router=router)
    return replace(bank, projections=projections)
