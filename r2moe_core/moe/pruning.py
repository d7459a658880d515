"""Layer-wise removal of redundant experts (the paper's LRER, judged by what the experts output).

A concept's new expert is dropped in every projection where, on the concept's own prompt(s), it produces less
than τ of the mixture's output ‖Σ_e g_e·ΔK_e‖: there the old experts already serve the concept. The paper reads
the gate weight g alone; that number is not fixed by the data (the loss depends only on g·ΔK, so training can
trade a small weight for a large expert), and in practice it follows where the previous task's expert was
alive. The output share is scale-free and falls where an old expert carries the concept. The first concept has
no old expert to lean on, so it keeps its expert everywhere. Pruned experts store nothing, which is where most
of R2MoE's parameter savings come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..bank.expert_bank import ExpertBank, ProjectionExperts
from ..errors import InvalidInputError
from .routing import training_coefficients

OVERPRUNED_SHARE = 0.75  # above this share of removed slots, the trainer warns


@dataclass(frozen=True)
class PruneReport:
    """What pruning did to one concept's expert: its output share per projection, and which slots it kept."""

    task: int
    concept: str
    threshold: float
    shares: dict[str, float] = field(default_factory=dict)  # projection -> new expert's share of the output
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

        That is right for a concept the old experts already draw (the same subject under a new name); for a new
        subject it means the gate leaned on old experts, which is worth a look at the images.
        """
        share = self.removed_share()
        if share <= max_share:
            return None
        return (
            f"pruning removed {share:.0%} of the new expert (median output share {self.median_share():.2f} "
            f"against τ={self.threshold:g}): old experts and the token carry this concept. If it looks weak, train "
            f"for more steps or lower prune_threshold to {self.suggested_threshold():g}, which keeps the expert "
            f"in at least half of the layers."
        )

    def median_share(self) -> float:
        values = sorted(self.shares.values())
        return values[len(values) // 2] if values else 0.0

    def suggested_threshold(self) -> float:
        """A τ just under the median share (rounded down to 0.01), so at least half the slots stay."""
        return max(math.floor(self.median_share() * 0.98 * 100) / 100, 0.0)


def _concept_inputs(bank: ExpertBank, task: int, gate_inputs: torch.Tensor | None) -> torch.Tensor:
    concept = next((c for c in bank.concepts if c.task == task), None)
    if concept is None:
        raise InvalidInputError(f"No concept with task index {task} in this bank.")
    m = concept.gate_input[None] if gate_inputs is None else gate_inputs
    if m.ndim != 2:
        raise InvalidInputError(f"gate inputs must be [N, D], got {tuple(m.shape)}")
    return m.float()


def _training_mixtures(
    bank: ExpertBank, task: int, gate_inputs: torch.Tensor | None
) -> tuple[torch.Tensor, list[tuple[str, ProjectionExperts, torch.Tensor]]]:
    """(projection name, projection, [N, n] training mixture) wherever expert `task` is alive, and the inputs."""
    m = _concept_inputs(bank, task, gate_inputs)
    n = bank.num_experts
    mixtures = [
        (name, proj, training_coefficients(m, proj.router(n), proj.alive_mask(n), task, bank.config.top_k))
        for name, proj in bank.projections.items()
        if task in proj.experts
    ]
    return m, mixtures


def new_expert_coefficients(
    bank: ExpertBank, task: int, gate_inputs: torch.Tensor | None = None
) -> dict[str, float]:
    """Mean gate coefficient of expert `task` in every projection where it is still alive.

    `gate_inputs` [N, D] are the concept's prompt embeddings (mean over tokens); by default the stored one.
    """
    _, mixtures = _training_mixtures(bank, task, gate_inputs)
    return {name: float(coeffs[:, task].mean()) for name, _, coeffs in mixtures}


def new_expert_shares(bank: ExpertBank, task: int, gate_inputs: torch.Tensor | None = None) -> dict[str, float]:
    """Share of expert `task` in the mixture's output on the concept's prompts, per projection where it is alive.

    share = Σ_n g_t‖m_n·ΔW_t‖ / Σ_n Σ_e g_e‖m_n·ΔW_e‖ over the training mixture (experts 1..t), with m_n the
    prompts' mean token rows: the deltas are linear in the context, so this is the mean token's delta, and it
    needs only the stored gate inputs (a bank can be re-pruned without its photos).
    """
    m, mixtures = _training_mixtures(bank, task, gate_inputs)
    out = {}
    for name, proj, coeffs in mixtures:
        sizes = {e: (m @ x.down.float() @ x.up.float()).norm(dim=1) for e, x in proj.experts.items() if e <= task}
        weighted = {e: (coeffs[:, e] * size).sum() for e, size in sizes.items()}
        total = float(sum(weighted.values()))
        out[name] = float(weighted[task]) / total if total > 0 else 0.0
    return out


def prune_task(
    bank: ExpertBank, task: int, threshold: float, gate_inputs: torch.Tensor | None = None
) -> tuple[ExpertBank, PruneReport]:
    """Remove expert `task` where its output share is below `threshold`; τ = 0 removes nothing, τ = 1 all of it
    (the concept is then carried by its token alone)."""
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"prune threshold must lie in [0, 1], got {threshold}")
    shares = new_expert_shares(bank, task, gate_inputs)
    removed = tuple(name for name, c in shares.items() if c < threshold or threshold >= 1.0)
    kept = tuple(name for name in shares if name not in removed)
    saved = sum(bank.projections[name].experts[task].nbytes for name in removed)
    concept = next(c for c in bank.concepts if c.task == task)
    report = PruneReport(task, concept.name, threshold, shares, removed, kept, saved)
    return (bank.without_experts(task, list(removed)) if removed else bank), report


def prune_bank(bank: ExpertBank, threshold: float) -> tuple[ExpertBank, list[PruneReport]]:
    """Re-prune every concept with another τ (only removes: a pruned expert cannot come back)."""
    reports = []
    for concept in sorted(bank.concepts, key=lambda c: c.task):
        bank, report = prune_task(bank, concept.task, threshold)
        reports.append(report)
    return bank, reports
