"""The planner interface: a prompt in, a validated layout out, whoever does the planning (rules or an LLM)."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from .layout import Layout


class Planner(abc.ABC):
    """Turns a prompt into a validated `Layout` for regional (HLAG) sampling."""

    @abc.abstractmethod
    def plan(self, prompt: str, known_tokens: Sequence[str], width: int, height: int, seed: int) -> Layout:
        """Layout for `prompt` on a width x height canvas; only `known_tokens` become concept regions."""
