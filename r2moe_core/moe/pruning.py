"""Layer-wise removal of redundant experts (the paper's LRER: drop a new expert where its gate weight is low).

A concept's new expert is dropped in every projection where the gate, on the concept's own prompt(s), gives it
a coefficient below τ: there the old experts and the base weights already serve the concept. Pruned experts
store nothing, which is where most of R2MoE's parameter savings come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..bank.expert_bank import ExpertBank
from ..errors import InvalidInputError
from .routing import training_coefficients

OVERPRUNED_SHARE = 0.75  # above this share of removed slots, the trainer warns


@dataclass(frozen=True)
class PruneReport:
    task: int
    concept: str
    threshold: float
    coefficients: dict[str, float] = field(default_factory=dict)  # projection -> new expert's mean coefficient
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    bytes_saved: int = 0

    def summary(self) -> str:
        total = len(self.removed) + len(self.kept)
        return (
            f"task {self.task} ({self.concept}): τ={self.threshold:g}, removed {len(self.removed)} of {total} "
            f"expert slots, kept {len(self.kept)}, saved {self.bytes_saved / 1024:.1f} KB"
        )

    def removed_share(self) -> float:
        total = len(self.removed) + len(self.kept)
        return len(self.removed) / total if total else 0.0

    def advice(self, max_share: float = OVERPRUNED_SHARE) -> str | None:
        """A warning when pruning took most of the new expert, or None.

        Short runs leave the gate near uniform over {aux, new, top-k old}, so the new expert's coefficient sits
        near 1/(k+2), under the default τ=0.4, and the concept then lives almost only in its token (measured in
        the lifelong benchmark: 50 steps per concept lost the whole expert from the third concept on).
        """
        share = self.removed_share()
        if share <= max_share:
            return None
        return (
            f"pruning removed {share:.0%} of the new expert (median gate weight {self.median_coefficient():.2f} "
            f"against τ={self.threshold:g}): the concept is carried mostly by its token. If it looks weak, train "
            f"for more steps (the paper uses 800) or with a higher router learning rate, or lower prune_threshold to "
            f"{self.suggested_threshold():g}, which keeps the expert in at least half of the layers."
        )

    def median_coefficient(self) -> float:
        values = sorted(self.coefficients.values())
        return values[len(values) // 2] if values else 0.0

    def suggested_threshold(self) -> float:
        """A τ just under the median coefficient (rounded down to 0.01), so at least half the slots stay."""
        return max(math.floor(self.median_coefficient() * 0.98 * 100) / 100, 0.0)


def new_expert_coefficients(
    bank: ExpertBank, task: int, gate_inputs: torch.Tensor | None = None
) -> dict[str, float]:
    """Mean gate coefficient of expert `task` in every projection where it is still alive.

    `gate_inputs` [N, D] are the concept's prompt embeddings (mean over tokens); by default the stored one.
    """
    concept = next((c for c in bank.concepts if c.task == task), None)
    if concept is None:
        raise InvalidInputError(f"No concept with task index {task} in this bank.")
    m = concept.gate_input[None] if gate_inputs is None else gate_inputs
    if m.ndim != 2:
        raise InvalidInputError(f"gate inputs must be [N, D], got {tuple(m.shape)}")
    out = {}
    for name, proj in bank.projections.items():
        if task not in proj.experts:
            continue
        n = bank.num_experts
        coeffs = training_coefficients(m.float(), proj.router(n), proj.alive_mask(n), task, bank.config.top_k)
        out[name] = float(coeffs[:, task].mean())
    return out


def prune_task(
    bank: ExpertBank, task: int, threshold: float, gate_inputs: torch.Tensor | None = None
) -> tuple[ExpertBank, PruneReport]:
    """Remove expert `task` where its coefficient is below `threshold`; τ = 0 removes nothing."""
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"prune threshold must lie in [0, 1], got {threshold}")
    coefficients = new_expert_coefficients(bank, task, gate_inputs)
    removed = tuple(name for name, c in coefficients.items() if c < threshold)
    kept = tuple(name for name in coefficients if name not in removed)
    saved = sum(bank.projections[name].experts[task].nbytes for name in removed)
    concept = next(c for c in bank.concepts if c.task == task)
    report = PruneReport(task, concept.name, threshold, coefficients, removed, kept, saved)
    return (bank.without_experts(task, list(removed)) if removed else bank), report


def prune_bank(bank: ExpertBank, threshold: float) -> tuple[ExpertBank, list[PruneReport]]:
    """Re-prune every concept with another τ (only removes: a pruned expert cannot come back)."""
    reports = []
    for concept in sorted(bank.concepts, key=lambda c: c.task):
        bank, report = prune_task(bank, concept.task, threshold)
        reports.append(report)
    return bank, reports
