"""Per-layer cross-attention (attn2) replace patches, shared by the bank patch and the regional patch.

ComfyUI keeps at most one attn2 replace per (block, number, transformer index) slot. Ours wrap whatever another
pack put there first (IPAdapter, InstantID): they call it for the attention itself and forward attribute
lookups to it, so that pack's own calls on the slot (IPAdapter's `set_new_condition`) still reach its patch.
`ModelPatcher.clone()` deep-copies model_options; our patches hold a bank, so they are shared on clone instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import comfy.ldm.modules.attention as attention
import torch

from ...r2moe_core.bank.attention_targets import LayerSpec

PASSES_TRANSFORMER_OPTIONS = hasattr(attention, "wrap_attn")  # attention kernels accept it since 0.3.6x


def stock_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any], preferred: Any = None
) -> torch.Tensor:
    """Exactly what CrossAttention.forward does after its projections, so an idle patch is bit-identical."""
    kwargs: dict[str, Any] = {"attn_precision": extra_options.get("attn_precision")}
    if PASSES_TRANSFORMER_OPTIONS:
        kwargs["transformer_options"] = extra_options
    if preferred is not None:  # newer ComfyUI: a per-layer attention kernel chosen by the checkpoint
        kwargs["preferred_attention"] = preferred
    return attention.optimized_attention(q, k, v, extra_options["n_heads"], **kwargs)


class SharedOnClone:
    """A patch object that `copy.deepcopy` (and so `ModelPatcher.clone()`) returns as itself."""

    def __deepcopy__(self, memo: dict) -> SharedOnClone:
        return self


class SlotPatch(SharedOnClone):
    """An attn2 replace that may wrap the slot's previous occupant and runs its attention, or the stock one."""

    def __init__(self, previous: Any = None, preferred: Any = None) -> None:
        self.previous = previous
        self.preferred = preferred  # the layer's own attention kernel, where the host sets one

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        """The attention this slot would run without us: the wrapped patch's, else the stock kernel."""
        if self.previous is not None:
            return self.previous(q, k, v, options)
        return stock_attention(q, k, v, options, self.preferred)

    def to(self, device: Any) -> SlotPatch:
        """ComfyUI calls `.to(device)` on every replace patch that has one when it loads the model and puts the
        result in the slot: move the wrapped patch, but keep this slot (else the bank would silently drop out)."""
        if self.previous is not None and hasattr(self.previous, "to"):
            self.previous = self.previous.to(device)
        return self

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this object lacks: hand them to the wrapped patch.
        previous = self.__dict__.get("previous")
        if previous is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(previous, name)


PatchFactory = Callable[[LayerSpec, Any, Any, Any], SlotPatch]  # (layer, CrossAttention module, previous, kernel)


def install_attn2_patches(patched: Any, layers: Sequence[LayerSpec], make_patch: PatchFactory) -> Any:
    """Put `make_patch(layer, module, previous, preferred)` into each layer's attn2 slot of `patched` (a
    ModelPatcher clone the caller owns), wrapping what the slot held; returns `patched`."""
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for layer in layers:
        block, number, index = layer.block_key
        previous = existing.get((block, number, index)) or existing.get((block, number))
        module = patched.get_model_object(f"diffusion_model.{layer.name}")
        preferred = getattr(module, "comfy_attention", None)
        patched.set_model_attn2_replace(make_patch(layer, module, previous, preferred), block, number, index)
    return patched
