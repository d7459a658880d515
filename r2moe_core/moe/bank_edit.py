"""Editing a bank as a library: remove a concept (and say whose mixtures it changes), rename a concept or its
trigger token with the same checks as training."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..bank.attention_targets import PROJECTIONS
from ..bank.expert_bank import ExpertBank
from ..errors import InvalidInputError
from .routing import inference_coefficients


@dataclass(frozen=True)
class MixtureChange:
    """How one remaining concept's mixture (at its own stored prompt) moved when another concept was removed."""

    name: str
    routed_to_removed: bool  # the removed expert had a share of its mixture in some layer
    max_change: float  # largest change of any expert's coefficient in any K/V projection (0 = bit-identical)


def concept_mixtures(bank: ExpertBank, name: str) -> torch.Tensor:
    """Mixture coefficients [projections, experts] of a concept at its own stored gate input."""
    concept = bank.concept_by_name(name)
    if concept is None:
        raise InvalidInputError(f"No concept named '{name}' in this bank.")
    m = concept.gate_input.float()[None]
    rows = []
    for layer in bank.layers:
        for proj_name in PROJECTIONS:
            proj = bank.projections[f"{layer.name}.{proj_name}"]
            alive = proj.alive_mask(bank.num_experts)
            coefficients = inference_coefficients(
                m, proj.router(bank.num_experts), alive, bank.config.top_k, bank.config.aux_in_inference
            )
            rows.append(coefficients[0])
    return torch.stack(rows)


def remove_concept(bank: ExpertBank, name: str) -> tuple[ExpertBank, list[MixtureChange]]:
    """The bank without `name` (its experts and gate columns in every layer, token and stored gate input), and
    for every other concept whether it routed to the removed expert and how far its mixture moved."""
    removed = bank.concept_by_name(name)
    if removed is None:
        known = ", ".join(f"'{c.name}'" for c in bank.concepts) or "none"
        raise InvalidInputError(f"No concept named '{name[:200]}' in this bank (concepts: {known}).")
    after = bank.without_concept(name)
    changes = []
    for concept in after.concepts:
        before_mix, after_mix = concept_mixtures(bank, concept.name), concept_mixtures(after, concept.name)
        routed = bool((before_mix[:, removed.task] > 0).any())
        changes.append(MixtureChange(concept.name, routed, float((before_mix - after_mix).abs().max())))
    return after, changes


def removal_summary(name: str, changes: list[MixtureChange]) -> str:
    lines = [f"removed '{name}'"]
    for change in changes:
        if change.max_change == 0.0:
            lines.append(f"  {change.name}: unchanged")
        else:
            via = "routed to it" if change.routed_to_removed else "did not route to it"
            lines.append(f"  {change.name}: mixture changed by up to {change.max_change:.3f} ({via})")
    return "\n".join(lines)


def rename_concept(bank: ExpertBank, name: str, new_name: str = "", new_token: str = "") -> ExpertBank:
    """The bank with a concept's name and/or trigger token changed; blank keeps the old one. The same checks as a
    new concept: a non-empty unique name, a one-word token no other concept uses."""
    concept = bank.concept_by_name(name)
    if concept is None:
        known = ", ".join(f"'{c.name}'" for c in bank.concepts) or "none"
        raise InvalidInputError(f"No concept named '{name[:200]}' in this bank (concepts: {known}).")
    new_name, new_token = new_name.strip() or concept.name, new_token.strip() or concept.token
    if new_name == concept.name and new_token == concept.token:
        raise InvalidInputError(f"Give a new name or a new trigger token for '{name}' (both are unchanged).")
    others = bank.without_concept(name)
    others.check_new_concept(new_name, new_token)
    renamed = replace(concept, name=new_name, token=new_token)
    return replace(bank, concepts=tuple(renamed if c.name == name else c for c in bank.concepts))
