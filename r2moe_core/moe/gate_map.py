"""Which experts one prompt routes to, layer by layer: the numbers and a heat map of them.

This is the question a user asks when a concept looks wrong or leaks: does `<dog1>`'s prompt select `<dog1>`'s
expert, and where? The weights are exactly the inference mixture the bank patch uses for that prompt.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..bank.attention_targets import PROJECTIONS
from ..bank.expert_bank import ExpertBank
from ..bank.experts import AUX_EXPERT
from ..bank.report import Colour, draw_layer_grid, short_layer_name
from .routing import gate_input, inference_coefficients


def prompt_gate_weights(bank: ExpertBank, context: torch.Tensor) -> torch.Tensor:
    """Mixture weights [experts, layers, 2 (K, V)] for one prompt's text context [1, tokens, dim]."""
    m = gate_input(context[:1])
    weights = torch.zeros(bank.num_experts, len(bank.layers), len(PROJECTIONS))
    for col, layer in enumerate(bank.layers):
        for half, proj_name in enumerate(PROJECTIONS):
            proj = bank.projections[f"{layer.name}.{proj_name}"]
            router = proj.router(bank.num_experts)
            alive = proj.alive_mask(bank.num_experts)
            coeffs = inference_coefficients(m, router, alive, bank.config.top_k, bank.config.aux_in_inference)
            weights[:, col, half] = coeffs[0].cpu()
    return weights


def expert_labels(bank: ExpertBank) -> list[str]:
    """Row labels: the auxiliary expert, then each expert id with its concept's token (or 'removed')."""
    by_task = {c.task: c.token for c in bank.concepts}
    labels = ["aux (base)" if i == AUX_EXPERT else f"{i}: {by_task.get(i, 'removed')}" for i in range(bank.num_experts)]
    return [label[:28] for label in labels]


def heat(value: float) -> Colour:
    """0 -> dark blue-grey, 1 -> bright yellow, through red: readable on the dark node background."""
    v = min(max(value, 0.0), 1.0)
    stops = [(0.0, (40, 44, 60)), (0.35, (150, 40, 90)), (0.7, (235, 110, 40)), (1.0, (250, 235, 90))]
    for (x0, c0), (x1, c1) in itertools.pairwise(stops):
        if v <= x1:
            f = (v - x0) / (x1 - x0)
            return tuple(int(a + (b - a) * f) for a, b in zip(c0, c1, strict=True))  # type: ignore[return-value]
    return stops[-1][1]


def gate_heatmap(bank: ExpertBank, weights: torch.Tensor, prompt: str) -> np.ndarray:
    """RGB float image [H, W, 3] of `prompt_gate_weights`, with a legend of the colour scale."""
    values = weights.numpy()
    return draw_layer_grid(
        f"gate weights for: {prompt[:80]}",
        expert_labels(bank),
        [short_layer_name(layer.name) for layer in bank.layers],
        lambda row, col, half: heat(float(values[row, col, half])),
        [(heat(v), f"{v:.2g}") for v in (0.0, 0.25, 0.5, 0.75, 1.0)] + [((24, 24, 28), "(left K, right V)")],
    )


def gate_summary(bank: ExpertBank, weights: torch.Tensor) -> str:
    """One line per expert with weight anywhere: its mean weight over K and V and the layers where it leads."""
    labels = expert_labels(bank)
    leaders = weights.argmax(dim=0)  # [layers, 2]
    lines = []
    for expert in range(weights.shape[0]):
        mean = float(weights[expert].mean())
        if mean == 0.0:
            continue
        leads = int((leaders == expert).sum())
        lines.append(f"{labels[expert]}: mean weight {mean:.2f}, strongest in {leads}/{leaders.numel()} projections")
    return "\n".join(lines) or "the bank has no experts: every layer uses the base weights"
