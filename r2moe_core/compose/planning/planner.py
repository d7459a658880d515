"""The planner interface: a prompt in, a validated layout out, whoever does the planning (rules or an LLM)."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from ...errors import InvalidInputError
from ..layout import Layout, find_tokens


class Planner(abc.ABC):
    """Turns a prompt into a validated `Layout` for regional (HLAG) sampling."""

    @abc.abstractmethod
    def plan(self, prompt: str, known_tokens: Sequence[str], width: int, height: int, seed: int) -> Layout:
        """Layout for `prompt` on a width x height canvas; only `known_tokens` become concept regions."""


def check_prompt_tokens(prompt: str, known_tokens: Sequence[str], layout: Layout) -> list[str]:
    """Warnings about the prompt's trigger tokens; raise when the layout would silently lose every concept.

    A `<name>` the bank does not know is drawn as plain text, never as a region: with no region left that is an
    error (the user asked for concepts and would get none), otherwise a warning naming the unknown tokens.
    """
    known = list(dict.fromkeys(known_tokens))
    unknown = [t for t in find_tokens(prompt, known) if t not in known]
    listed = ", ".join(known) if known else "none: train a concept into it first"
    if unknown and not layout.regions:
        raise InvalidInputError(
            f"The prompt's trigger token(s) {', '.join(unknown)} are not concepts of the connected bank (it knows: "
            f"{listed}). Fix the spelling, connect the bank that has them, or train them first."
        )
    if unknown:
        return [f"{', '.join(unknown)} not in the bank (it knows: {listed}); drawn as plain text, without a region."]
    if not layout.regions:
        return [f"The prompt names no concept of the bank (it knows: {listed}); the layout has no regions."]
    return []
