"""How one task may change the gate: along the new concept's own prompt direction, and nowhere else.

Prompts of different concepts have nearly parallel mean embeddings (cosine 0.99 in SD-style text encoders: the
start token and the padding rows are the same for every prompt, and concepts of one class share most words), so
a router step taken in the full embedding space moves every concept's scores together. Instead, task t changes
the gate only through two fixed directions computed once from the prompts:

- `own` (u): scores exactly 1 on the new concept's prompts and exactly 0 on every protected prompt (the old
  concepts' stored gate inputs, the empty prompt, the plain class prompts and the concept's captions without the
  trigger, so u keys on what the token adds rather than on the captions' scene words). Each expert e gets a learnable
  score a_e along u, so the gate learns, per projection and in score units, how much of each expert the new
  concept needs, while every protected prompt keeps its scores bit for bit.
- `away` (w): scores 0 on the new concept's prompts and -1 on every protected prompt. The new expert's column
  gets margin·w, so it stays out of old concepts' and plain prompts' mixtures.

Both are least-norm solutions, so prompts unlike any of these move as little as possible.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from ..log import LOGGER

# Below this share of its norm left after removing the protected prompts, the concept's prompt cannot be told
# apart from them: the gate update is switched off and the concept relies on its token and expert only.
MIN_DISTINCT_SHARE = 1e-4


@dataclass(frozen=True)
class RoutingDirections:
    """`own` [D] scores 1 on the concept and 0 on protected prompts; `away` [D] scores 0 and -1."""

    own: torch.Tensor
    away: torch.Tensor
    distinct_share: float  # |concept component off the protected span| / |concept|


def routing_directions(concept: torch.Tensor, protected: torch.Tensor) -> RoutingDirections:
    """Least-norm u with concept·u = 1, P·u = 0 and w with concept·w = 0, P·w = -1 (P: protected rows [J, D])."""
    if concept.ndim != 1 or protected.ndim != 2 or protected.shape[1:] != concept.shape:
        raise InvalidInputError(
            f"concept gate input must be [D] and protected rows [J, D]; got {tuple(concept.shape)} and "
            f"{tuple(protected.shape)}"
        )
    c = concept.double()
    rows = protected.double()
    residual = c - torch.linalg.pinv(rows) @ (rows @ c) if rows.shape[0] else c
    share = float(residual.norm() / c.norm().clamp_min(1e-30))
    if share < MIN_DISTINCT_SHARE:
        LOGGER.warning(
            "R2MoE: this concept's prompt equals a protected prompt (an old concept's or a plain class prompt); the "
            "gate cannot route it apart, so only its token and expert carry it."
        )
        own = torch.zeros_like(c)
    else:
        own = residual / residual.square().sum()
    if rows.shape[0]:
        system = torch.cat([c[None], rows])
        target = torch.cat([c.new_zeros(1), -c.new_ones(rows.shape[0])])
        away = torch.linalg.pinv(system) @ target
    else:
        away = torch.zeros_like(c)
    return RoutingDirections(own.float(), away.float(), share)


def plain_prompts(class_words: Iterable[str], captions: Iterable[str] = (), token: str = "") -> list[str]:
    """Prompts that must not route to a new expert: the empty prompt, `photo of a {class}` for every class and,
    when given, the concept's own captions with its trigger token taken out.

    The captions without the trigger are what makes the gate key on the token: the captions' scene words
    (backgrounds, places, styles) are then protected too, so the new expert's direction is left with what the
    token adds to the prompt, and a prompt that names the concept without those words still routes to it.
    """
    words = sorted({w.strip() for w in class_words if w.strip()})
    plain = ["", *(f"photo of a {w}" for w in words)]
    if token:
        plain += [without_trigger(c, token) for c in captions]
    return list(dict.fromkeys(plain))


def without_trigger(caption: str, token: str) -> str:
    """The caption with every occurrence of the trigger token removed (spaces tidied)."""
    return " ".join(caption.replace(token, " ").split())
