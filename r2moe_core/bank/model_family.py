"""Which UNet family a bank belongs to, read off its cross-attention layers alone.

The experts sit on K/V projections whose input is the text context, so a family is told apart by that context's
width: SD1.x reads CLIP-L (768), SD 2.x OpenCLIP-H (1024), SDXL CLIP-L and OpenCLIP-bigG concatenated (2048).
The family also fixes the trigger token's layout: one embedding per text encoder, stored side by side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidInputError
from .attention_targets import LayerSpec


@dataclass(frozen=True)
class ModelFamily:
    """One supported UNet family: its name in bank files, its name for people, its text encoders (embedding key
    as ComfyUI's embedding files spell it, width), and the resolution it was trained at."""

    name: str
    label: str
    context_dim: int
    encoders: tuple[tuple[str, int], ...]
    resolution: int

    @property
    def token_dim(self) -> int:
        """Width of one trigger-token vector: the encoders' embeddings side by side."""
        return sum(width for _, width in self.encoders)


SD1 = ModelFamily("sd1", "SD1.x", 768, (("clip_l", 768),), 512)
SD2 = ModelFamily("sd2", "SD 2.x", 1024, (("clip_h", 1024),), 768)
SDXL = ModelFamily("sdxl", "SDXL", 2048, (("clip_l", 768), ("clip_g", 1280)), 1024)
FAMILIES = (SD1, SD2, SDXL)


def family_named(name: str) -> ModelFamily | None:
    return next((family for family in FAMILIES if family.name == name), None)


def family_label(name: str) -> str:
    """`sdxl` -> `SDXL`; a bank of no known family (a script's toy model) is described by its name."""
    family = family_named(name)
    return family.label if family is not None else (name or "a custom model")


def family_of_layers(layers: Iterable[LayerSpec]) -> ModelFamily | None:
    """The family whose text context every layer reads, or None (no layers, mixed widths, another width)."""
    contexts = {layer.in_dim for layer in layers}
    if len(contexts) != 1:
        return None
    width = contexts.pop()
    return next((family for family in FAMILIES if family.context_dim == width), None)


def family_name_for(layers: Iterable[LayerSpec], token_dim: int) -> str:
    """The family name a bank with these layers and token width records: "" unless both are a family's."""
    family = family_of_layers(layers)
    return family.name if family is not None and family.token_dim == token_dim else ""


def encoder_columns(encoders: tuple[tuple[str, int], ...]) -> tuple[tuple[str, slice], ...]:
    """Each text encoder's columns of a trigger-token vector, whose encoders' embeddings sit side by side."""
    out, offset = [], 0
    for key, width in encoders:
        out.append((key, slice(offset, offset + width)))
        offset += width
    return tuple(out)


def require_family(layers: list[LayerSpec]) -> ModelFamily:
    """The family of a host model's layers, or a clear refusal naming what the model has."""
    family = family_of_layers(layers)
    if family is None:
        contexts = "/".join(str(w) for w in sorted({layer.in_dim for layer in layers})) or "no"
        raise InvalidInputError(
            f"This MODEL's cross-attention reads a {contexts}-wide text context; R2MoE supports "
            + ", ".join(f"{f.label} ({f.context_dim})" for f in FAMILIES)
            + ". Connect one of those checkpoints."
        )
    return family
