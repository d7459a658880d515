"""The MoE cross-attention patch on a ComfyUI MODEL: the bank's expert deltas added to every layer's K/V.

One DIFFUSION_MODEL wrapper sees the raw text context once per UNet call and stashes the cached routing state
in transformer_options; one attn2 replace per cross-attention layer (ComfyUI's own per-layer patch point, which
hands the patch the already-projected q, k, v) adds the gated expert deltas to K/V and then runs the attention
of the slot's previous occupant, or the stock kernel.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import comfy.patcher_extension
import torch

from ...r2moe_core.bank.attention_targets import LayerSpec
from ...r2moe_core.bank.expert_bank import ExpertBank
from ...r2moe_core.log import LOGGER
from ...r2moe_core.moe.delta_cache import BankRuntime
from .attn2_slots import SharedOnClone, SlotPatch, install_attn2_patches
from .clip_tokens import clip_with_concepts
from .model_inspection import check_bank_serves

if TYPE_CHECKING:  # ComfyUI's own classes, for the annotations only
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP

_ids = itertools.count()


class ContextStashWrapper(SharedOnClone):
    """DIFFUSION_MODEL wrapper: hands the raw context and cond/uncond layout to the layer patches."""

    def __init__(self, runtime: Any, stash_key: str) -> None:
        self.runtime = runtime
        self.stash_key = stash_key

    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        context = args[2] if len(args) > 2 else kwargs.get("context")
        options = args[5] if len(args) > 5 else kwargs.get("transformer_options")
        if context is None or options is None or not self.runtime.has_experts:
            return executor(*args, **kwargs)
        options[self.stash_key] = self.runtime.entry_for(
            context, options.get("cond_or_uncond"), options.get("uuids")
        )
        try:
            return executor(*args, **kwargs)
        finally:
            options.pop(self.stash_key, None)


class MoEAttentionPatch(SlotPatch):
    """attn2 replace for one layer: k += ΔK(c), v += ΔV(c), then the stock (or the previous patch's) attention."""

    def __init__(
        self, runtime: Any, layer: LayerSpec, stash_key: str, previous: Any = None, preferred: Any = None
    ) -> None:
        super().__init__(previous, preferred)
        self.runtime = runtime
        self.k_name, self.v_name = layer.projection_names()
        self.stash_key = stash_key
        self._warned = False

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
    ) -> torch.Tensor:
        entry = extra_options.get(self.stash_key)
        if entry is not None:
            dk = self.runtime.delta(entry, self.k_name)
            dv = self.runtime.delta(entry, self.v_name)
            if (dk is None or dk.shape == k.shape) and (dv is None or dv.shape == v.shape):
                # k and v are fresh outputs of to_k/to_v that nothing else holds: add in place, no new buffer.
                k = k if dk is None else k.add_(dk.to(k.dtype))
                v = v if dv is None else v.add_(dv.to(v.dtype))
            elif not self._warned:
                self._warned = True
                LOGGER.warning(
                    "R2MoE: another patch changed the text context of %s (K %s); the bank is skipped in this layer.",
                    self.k_name.rsplit(".", 1)[0],
                    tuple(k.shape),
                )
        return self.attend(q, k, v, extra_options)


def install_runtime(model: ModelPatcher, runtime: Any, layers: Sequence[LayerSpec]) -> Any:
    """Return a clone of `model` (a ModelPatcher) whose cross-attention layers take their K/V deltas from
    `runtime` (a BankRuntime for sampling, a TrainingRuntime while learning)."""
    patched = model.clone()
    stash_key = f"r2moe_{next(_ids)}"
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, stash_key, ContextStashWrapper(runtime, stash_key)
    )

    def make_patch(layer: LayerSpec, module: Any, previous: Any, preferred: Any) -> MoEAttentionPatch:
        return MoEAttentionPatch(runtime, layer, stash_key, previous, preferred)

    return install_attn2_patches(patched, layers, make_patch)


def install_bank(model: ModelPatcher, bank: ExpertBank, strength: float) -> tuple[Any, BankRuntime]:
    """Return a clone of `model` with the bank's MoE patch installed, and the runtime that serves it."""
    runtime = BankRuntime(bank, strength)
    return install_runtime(model, runtime, bank.layers), runtime


def apply_bank(
    model: ModelPatcher, clip: CLIP, bank: ExpertBank, strength: float, allow_other_weights: bool
) -> tuple[ModelPatcher, CLIP]:
    """Check that the bank serves this MODEL and CLIP, then return both patched: experts in the UNet, the
    concepts' trigger tokens in the text encoder."""
    check_bank_serves(bank, model, clip, allow_other_weights)
    patched_model, _ = install_bank(model, bank, strength)
    return patched_model, clip_with_concepts(clip, bank)
