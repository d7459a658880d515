"""The gate: which experts serve a prompt, and with what weight (a linear router on the prompt's mean embedding).

Routing is per batch row, so every prompt (and every region prompt) gets its own mixture.
"""

from __future__ import annotations

import torch

from ..bank.experts import AUX_EXPERT
from ..errors import InvalidInputError


def gate_input(context: torch.Tensor) -> torch.Tensor:
    """Mean text embedding over the token axis (padding included, as in the reference): [B, N, D] -> [B, D]."""
    if context.ndim != 3:
        raise InvalidInputError(f"text context must be [batch, tokens, dim], got shape {tuple(context.shape)}")
    return context.float().mean(dim=1)


def gate_scores(m: torch.Tensor, router: torch.Tensor) -> torch.Tensor:
    """Linear router scores [B, P] from gate inputs [B, D] and the summed router [D, P]."""
    if m.ndim != 2 or router.ndim != 2 or m.shape[1] != router.shape[0]:
        raise InvalidInputError(
            f"gate input {tuple(m.shape)} does not fit router {tuple(router.shape)} (need [B, D] and [D, P])"
        )
    return m.float() @ router.to(m.device, torch.float32)


def select_experts(
    scores: torch.Tensor, candidates: torch.Tensor, k: int, forced: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean [B, P]: the top-k candidates of each row by score, plus every forced expert.

    `candidates` and `forced` are boolean [P] masks; a forced expert need not be a candidate.
    """
    if scores.ndim != 2 or candidates.shape != scores.shape[1:]:
        raise InvalidInputError(f"scores {tuple(scores.shape)} and candidates {tuple(candidates.shape)} disagree")
    if k < 0:
        raise InvalidInputError(f"top-k must be >= 0, got {k}")
    k = min(k, int(candidates.sum()))  # read before moving to the device: no GPU sync
    candidates = candidates.to(scores.device)
    selected = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        masked = scores.masked_fill(~candidates, float("-inf"))
        top = masked.topk(k, dim=1).indices
        selected.scatter_(1, top, True)
    if forced is not None:
        selected |= forced.to(scores.device)
    return selected


def mixture_coefficients(scores: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Softmax over the selected scores of each row, exactly zero elsewhere (rows with nothing selected: all 0)."""
    masked = scores.float().masked_fill(~selected, float("-inf"))
    coeffs = torch.softmax(masked, dim=1)
    return torch.nan_to_num(coeffs, nan=0.0) * selected


def inference_coefficients(
    m: torch.Tensor, router: torch.Tensor, alive: torch.Tensor, top_k: int, aux_in_softmax: bool = True
) -> torch.Tensor:
    """Inference routing: top-k of the alive experts 1..T, plus the auxiliary expert if configured.

    `alive` is a boolean [P] mask; the auxiliary expert's entry is ignored (it is handled by `aux_in_softmax`).
    """
    scores = gate_scores(m, router)
    candidates = alive.clone().bool()
    candidates[AUX_EXPERT] = False
    forced = torch.zeros_like(candidates)
    forced[AUX_EXPERT] = aux_in_softmax
    return mixture_coefficients(scores, select_experts(scores, candidates, top_k, forced))


def training_coefficients(
    m: torch.Tensor, router: torch.Tensor, alive: torch.Tensor, task: int, top_k: int
) -> torch.Tensor:
    """Selective activation while learning task t: the auxiliary expert and expert t always,
    plus the top-k' alive old experts 1..t-1 with k' = min(t-1, K-1); softmax over those. Experts after t are
    ignored (they did not exist when task t was learned)."""
    if not 1 <= task < router.shape[1]:
        raise InvalidInputError(f"task {task} has no router column (router has {router.shape[1]} columns)")
    scores = gate_scores(m, router)
    ids = torch.arange(router.shape[1])
    candidates = alive.bool() & (ids >= 1) & (ids < task)
    forced = (ids == AUX_EXPERT) | (ids == task)
    selected = select_experts(scores, candidates, min(task - 1, top_k - 1), forced)
    return mixture_coefficients(scores, selected)
