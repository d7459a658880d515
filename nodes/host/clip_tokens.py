"""Concept trigger tokens through the stock CLIP path.

The CLIP returned by R2MoEApplyBank carries a tokenizer wrapper: it rewrites `<dog1>` into ComfyUI's own
`embedding:` syntax and answers that lookup with the concept's learned vectors, so an unmodified CLIPTextEncode
produces the concept. The host's tokenizer object is shared between CLIP clones, so we wrap shallow copies and
never touch the original.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from ...r2moe_core.bank.expert_bank import ExpertBank
from ...r2moe_core.bank.model_family import encoder_columns
from ...r2moe_core.bank.trigger_tokens import RESERVED_PREFIX, embedding_name, lookup_embedding, substitute_triggers
from ...r2moe_core.log import LOGGER
from ...r2moe_core.moe.routing import gate_input

if TYPE_CHECKING:  # ComfyUI's own classes, for the annotations only
    from comfy.sd import CLIP


def _inner_tokenizers(tokenizer: Any) -> list[tuple[str, Any]]:
    """The per-encoder SDTokenizer objects inside an SD1Tokenizer-like object (attribute name, object)."""
    found = []
    for attr, value in vars(tokenizer).items():
        if hasattr(value, "_try_get_embedding") and hasattr(value, "embedding_identifier"):
            found.append((attr, value))
    return found


Encoders = tuple[tuple[str, int], ...]


def encoder_slice(inner: Any, encoders: Encoders) -> slice | None:
    """Which columns of a trigger-token vector belong to this SDTokenizer's encoder: found by its embedding key
    (clip_l, clip_g, clip_h), or by width when the layout has one unnamed encoder; None if it has no part."""
    key, width = getattr(inner, "embedding_key", ""), getattr(inner, "embedding_size", None)
    if len(encoders) == 1 and not encoders[0][0] and width in (None, encoders[0][1]):
        return slice(0, encoders[0][1])
    return next((columns for name, columns in encoder_columns(encoders) if name == key), None)


def with_bank_lookup(inner: Any, embeddings: dict[str, torch.Tensor], columns: slice | None = None) -> Any:
    """A copy of one SDTokenizer whose embedding lookup answers the bank's reserved names first, with its
    encoder's `columns` of each trigger-token vector."""
    clone = copy.copy(inner)
    if clone.embedding_directory is None:  # the host only looks up embeddings when it has a directory
        clone.embedding_directory = []
    own = vars(inner).get("_try_get_embedding")  # already wrapped by another pack: keep that wrapper
    host_lookup = own if own is not None else type(inner)._try_get_embedding.__get__(clone)
    # ComfyUI 0.3.x returns (embed, leftover); newer releases return (embed, name, leftover).
    arity = len(host_lookup(RESERVED_PREFIX + "arity_probe"))
    width = getattr(inner, "embedding_size", None)

    def try_get_embedding(name: str) -> tuple[Any, ...]:
        parts = name.split()
        if parts:
            vectors = lookup_embedding(parts[0], embeddings)
            if vectors is not None and columns is not None:
                vectors = vectors[:, columns]
            if vectors is not None and (width is None or vectors.shape[-1] == width):
                leftover = " ".join(parts[1:])
                return (vectors, parts[0], leftover) if arity == 3 else (vectors, leftover)
        return host_lookup(name)

    clone._try_get_embedding = try_get_embedding
    return clone


class ConceptTokenizer:
    """Wraps a CLIP tokenizer: trigger tokens become learned embeddings; everything else delegates.

    A trigger-token vector holds one embedding per text encoder side by side (`encoders`: key, width); each of the
    host's per-encoder tokenizers gets its own columns (SDXL: clip_l the first 768, clip_g the next 1280)."""

    def __init__(self, tokenizer: Any, embeddings: dict[str, torch.Tensor], encoders: Encoders = ()) -> None:
        self.base = tokenizer
        self.embeddings = dict(embeddings)  # trigger token -> [n, dim]
        self.encoders = tuple(encoders)
        by_name = {embedding_name(token): vectors for token, vectors in self.embeddings.items()}
        self._patched = copy.copy(tokenizer)
        inner = _inner_tokenizers(tokenizer)
        if self.embeddings and not inner:
            LOGGER.warning("R2MoE: this CLIP's tokenizer has no embedding support; trigger tokens stay plain text.")
        for attr, value in inner:
            columns = encoder_slice(value, self.encoders) if self.encoders else None
            setattr(self._patched, attr, with_bank_lookup(value, by_name, columns))

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> Any:
        text, _found = substitute_triggers(text, list(self.embeddings))
        return self._patched.tokenize_with_weights(text, return_word_ids, **kwargs)

    def __getattr__(self, name: str) -> Any:
        patched = self.__dict__.get("_patched")
        if patched is None:  # during copy/pickle, before __init__ state exists
            raise AttributeError(name)
        return getattr(patched, name)


def clip_with_concepts(clip: CLIP, bank: ExpertBank, extra: dict[str, torch.Tensor] | None = None) -> Any:
    """A CLIP clone whose tokenizer knows the bank's trigger tokens, plus those of banks applied before it and any
    `extra` ones (a token being imported, not yet in the bank)."""
    patched = clip.clone()
    base, embeddings = clip.tokenizer, {}
    if isinstance(base, ConceptTokenizer):
        base, embeddings = base.base, dict(base.embeddings)
    embeddings.update({c.token: c.embedding.detach().float().cpu() for c in bank.concepts})
    embeddings.update(extra or {})
    patched.tokenizer = ConceptTokenizer(base, embeddings, bank.token_encoders) if embeddings else base
    return patched


def encode_prompt(clip: CLIP, text: str) -> torch.Tensor:
    """[1, tokens, dim] text context, exactly as CLIPTextEncode makes it (no hooks)."""
    return clip.encode_from_tokens(clip.tokenize(text))


def prompt_gate_inputs(clip: CLIP, texts: list[str]) -> torch.Tensor:
    """[N, D] gate inputs (mean text embedding) of each prompt, on the CPU."""
    with torch.no_grad():
        return torch.cat([gate_input(encode_prompt(clip, text)) for text in texts]).cpu()


def concept_positions(clip: CLIP, text: str) -> tuple[int, ...]:
    """Positions in the encoded prompt of its concept tokens (the vectors a trigger token or embedding became);
    every word's position when it has none. Start, end and padding tokens never count."""
    tokenized = clip.tokenize(text, return_word_ids=True)
    if not isinstance(tokenized, dict) or not tokenized:
        return ()
    batches = tokenized.get("l") or next(iter(tokenized.values()))
    concepts, words, offset = [], [], 0
    for batch in batches:
        for index, item in enumerate(batch):
            token, word = item[0], item[2] if len(item) > 2 else 0
            if isinstance(token, torch.Tensor):
                concepts.append(offset + index)
            elif word:
                words.append(offset + index)
        offset += len(batch)
    return tuple(concepts or words)
