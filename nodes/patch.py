"""The MoE cross-attention patch, installed the way ComfyUI intends (host-notes §2.5).

One DIFFUSION_MODEL wrapper sees the raw text context once per UNet call and stashes the cached routing state
in transformer_options; one attn2_replace per cross-attention layer adds the gated expert deltas to the
already-projected K/V. A replace patch that another pack put in a slot first (IPAdapter, InstantID) is kept and
called for the attention itself, so both apply.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import comfy.ldm.modules.attention as attention
import comfy.patcher_extension
import torch

from ..r2moe_core.bank import ExpertBank
from ..r2moe_core.layers import LayerSpec
from ..r2moe_core.log import LOGGER
from ..r2moe_core.runtime import BankRuntime

_PASSES_TRANSFORMER_OPTIONS = hasattr(attention, "wrap_attn")  # attention kernels accept it since 0.3.6x
_ids = itertools.count()


def _stock_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any], preferred: Any = None
) -> torch.Tensor:
    """Exactly what CrossAttention.forward does after its projections, so an idle patch is bit-identical."""
    kwargs: dict[str, Any] = {"attn_precision": extra_options.get("attn_precision")}
    if _PASSES_TRANSFORMER_OPTIONS:
        kwargs["transformer_options"] = extra_options
    if preferred is not None:  # newer ComfyUI: a per-layer attention kernel chosen by the checkpoint
        kwargs["preferred_attention"] = preferred
    return attention.optimized_attention(q, k, v, extra_options["n_heads"], **kwargs)


class _SharedOnClone:
    """ModelPatcher.clone() deep-copies model_options; our patches hold the bank, so they are shared instead."""

    def __deepcopy__(self, memo: dict) -> _SharedOnClone:
        return self


class ContextStashWrapper(_SharedOnClone):
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


class MoEAttentionPatch(_SharedOnClone):
    """attn2_replace for one layer: k += ΔK(c), v += ΔV(c), then the stock (or the previous patch's) attention."""

    def __init__(
        self, runtime: Any, layer: LayerSpec, stash_key: str, previous: Any = None, preferred: Any = None
    ) -> None:
        self.runtime = runtime
        self.preferred = preferred
        self.k_name, self.v_name = layer.projection_names()
        self.stash_key = stash_key
        self.previous = previous
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
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return _stock_attention(q, k, v, extra_options, self.preferred)

    def __getattr__(self, name: str) -> Any:
        # Packs that find a slot taken call methods of the occupant (IPAdapter: set_new_condition); let those
        # reach the patch we wrapped instead of failing on ours.
        previous = self.__dict__.get("previous")
        if previous is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(previous, name)


def install_runtime(model: Any, runtime: Any, layers: Sequence[LayerSpec]) -> Any:
    """Return a clone of `model` (a ModelPatcher) whose cross-attention layers take their K/V deltas from
    `runtime` (a BankRuntime for sampling, a TrainingRuntime while learning)."""
    patched = model.clone()
    stash_key = f"r2moe_{next(_ids)}"
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, stash_key, ContextStashWrapper(runtime, stash_key)
    )
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for layer in layers:
        block, number, index = layer.block_key
        previous = existing.get((block, number, index)) or existing.get((block, number))
        preferred = getattr(patched.get_model_object(f"diffusion_model.{layer.name}"), "comfy_attention", None)
        patch = MoEAttentionPatch(runtime, layer, stash_key, previous, preferred)
        patched.set_model_attn2_replace(patch, block, number, index)
    return patched


def install_bank(model: Any, bank: ExpertBank, strength: float) -> tuple[Any, BankRuntime]:
    """Return a clone of `model` with the bank's MoE patch installed."""
    runtime = BankRuntime(bank, strength)
    return install_runtime(model, runtime, bank.layers), runtime
