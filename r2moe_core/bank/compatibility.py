"""Whether a bank can serve a given model, CLIP and file name: the checks every node runs before any work.

The host layer reads the layers, fingerprint and token width off its own objects; the decisions and their
messages live here so that every node refuses the same input with the same words.
"""

from __future__ import annotations

import re

from ..errors import BankMismatchError, InvalidInputError
from .attention_targets import LayerSpec, describe_layers
from .expert_bank import ExpertBank
from .fingerprint import ModelFingerprint, fingerprint_differences
from .model_family import family_label, family_of_layers

BANK_SUFFIX = ".safetensors"
_SAFE_NAME = re.compile(r"^[\w\-. ]+$")


def check_bank_fits(
    bank: ExpertBank, layers: list[LayerSpec], fingerprint: ModelFingerprint, allow_other_weights: bool = False
) -> list[str]:
    """Raise if the bank cannot serve a model with these layers and K/V fingerprint; return warnings for a
    tolerated weight mismatch (same shape, other weights, `allow_other_weights` on)."""
    model_family = family_of_layers(layers)
    model_name = model_family.name if model_family is not None else ""
    if bank.family and bank.family != model_name:
        raise BankMismatchError(
            f"This bank was made for {family_label(bank.family)}; the connected MODEL is "
            f"{family_label(model_name)}. A bank serves only its own model family: connect a "
            f"{family_label(bank.family)} checkpoint, or make a new bank for this one with R2MoE New Bank."
        )
    if tuple(layers) != bank.layers:
        names_bank = [layer.name for layer in bank.layers]
        missing = [layer.name for layer in layers if layer.name not in names_bank][:3]
        raise BankMismatchError(
            f"This bank was made for a model with {describe_layers(list(bank.layers))}; the connected MODEL has "
            f"{describe_layers(layers)}"
            + (f" (e.g. {', '.join(missing)} not in the bank)" if missing else "")
            + ". Connect the checkpoint the bank was made for, or create a new bank with R2MoE New Bank."
        )
    differing = fingerprint_differences(bank.fingerprint, fingerprint, layers)
    if not differing:
        return []
    message = (
        f"The connected MODEL has the right shape but other K/V weights than the model this bank was made for "
        f"(bank {bank.fingerprint.digest}, model {fingerprint.digest}; {len(differing)} of "
        f"{2 * len(layers)} projections differ, e.g. {differing[0]})."
    )
    if not allow_other_weights:
        raise BankMismatchError(
            message + " Connect the original checkpoint, or enable 'allow_other_weights' to use the experts on "
            "this fine-tune anyway (like a LoRA on another checkpoint)."
        )
    return [message + " Applied anyway because allow_other_weights is on."]


def check_token_width(bank: ExpertBank, width: int, new_concept: bool = False) -> None:
    """Refuse a text encoder whose token embeddings are not as wide as the bank's concept tokens.

    An empty bank fits any CLIP for sampling (it has no tokens to feed), but not for learning a concept.
    """
    if width == bank.token_dim or not (bank.concepts or new_concept):
        return
    raise InvalidInputError(
        f"The CLIP input has {width}-wide token embeddings, the bank's concept tokens are {bank.token_dim} wide; "
        "connect the CLIP of the checkpoint the bank was made for."
    )


def bank_file_name(name: str) -> str:
    """`my concepts` -> `my concepts.safetensors`, refusing anything that is not a plain file name."""
    stem = name.strip().removesuffix(BANK_SUFFIX)
    if not stem or not _SAFE_NAME.match(stem) or stem.startswith("."):
        raise InvalidInputError(
            f"Bank name '{stem}' is not a plain file name; use letters, digits, spaces, '-', '_' or '.'."
        )
    return stem + BANK_SUFFIX
