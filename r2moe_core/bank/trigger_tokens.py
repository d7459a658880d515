"""Trigger tokens in prompt text: find `<dog1>` and hand its learned embedding to the text encoder.

The host tokenizer understands `embedding:NAME` (textual-inversion syntax), so we rewrite each trigger token
into that syntax with a reserved name and answer the tokenizer's lookup for that name from the bank.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

RESERVED_PREFIX = "r2moe__"


def embedding_name(token: str) -> str:
    """Reserved embedding name for a trigger token; never a file name a user would have."""
    safe = re.sub(r"[^0-9A-Za-z_]", lambda m: f"x{ord(m.group()):x}", token)
    return f"{RESERVED_PREFIX}{safe}"


def trigger_pattern(token: str) -> re.Pattern[str]:
    """A trigger matched as a whole word: `<dog1>` in "a <dog1>, running" but not inside `<dog10>`."""
    return re.compile(r"(?<![\w<>])" + re.escape(token) + r"(?![\w<>])")


def substitute_triggers(text: str, tokens: list[str]) -> tuple[str, list[str]]:
    """Rewrite every trigger token into the host's embedding syntax; returns the text and the tokens found.

    Longer tokens are replaced first so that one token being a prefix of another cannot split it.
    """
    found = []
    for token in sorted(set(tokens), key=len, reverse=True):
        pattern = trigger_pattern(token)
        if pattern.search(text):
            found.append(token)
            text = pattern.sub(f" embedding:{embedding_name(token)} ", text)
    return text, found


def lookup_embedding(name: str, embeddings: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """Embedding for a reserved name, else None (the host then falls back to its own embedding folder)."""
    return embeddings.get(name) if name.startswith(RESERVED_PREFIX) else None
