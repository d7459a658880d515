"""Regional multi-concept sampling (HLAG) on a ComfyUI MODEL: cross-attention that follows a layout.

Each cross-attention layer gets an attn2_replace patch (wrapping whatever patch held the slot before, like the
bank patch does). The conditional rows' attention is replaced by the core's regional blend; the
unconditional rows run the stock (or previous) attention untouched. An OUTER_SAMPLE wrapper marks each sampling
run, so region K/V are computed once per run and layer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import comfy.patcher_extension
import torch

from ...r2moe_core.bank.attention_targets import LayerSpec
from ...r2moe_core.bank.expert_bank import ExpertBank
from ...r2moe_core.compose.grid_levels import grid_levels
from ...r2moe_core.compose.layout import Layout, validate_layout
from ...r2moe_core.compose.masks.attention_masks import ConceptAttention
from ...r2moe_core.compose.regional_attention import BlendSettings, RegionalRuntime, row_spans, token_grid
from ...r2moe_core.errors import InvalidInputError
from ...r2moe_core.log import LOGGER
from .attn2_slots import SharedOnClone, SlotPatch, install_attn2_patches, stock_attention
from .clip_tokens import clip_with_concepts, concept_positions, encode_prompt
from .model_inspection import check_bank_serves

if TYPE_CHECKING:  # ComfyUI's own classes, for the annotations only
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP

_ids = itertools.count()


class RunResetWrapper(SharedOnClone):
    """OUTER_SAMPLE wrapper: a new sampling run starts with fresh region K/V and frees them afterwards."""

    def __init__(self, runtime: RegionalRuntime) -> None:
        self.runtime = runtime

    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        self.runtime.reset()
        try:
            return executor(*args, **kwargs)
        finally:
            self.runtime.reset()


class RegionalAttentionPatch(SlotPatch):
    """attn2 replace for one layer: conditional rows get the regional blend, the rest what they had before."""

    def __init__(
        self, runtime: RegionalRuntime, layer: LayerSpec, module: Any, previous: Any = None, preferred: Any = None,
        level: int = 0,
    ) -> None:
        super().__init__(previous, preferred)
        self.runtime = runtime
        self.layer = layer
        self.module = module  # the layer's CrossAttention: its to_k/to_v are the base projections
        self.level = level  # the layer's grid, counted from the UNet's finest attention grid (`grid_levels`)

    def _regional(self, q: torch.Tensor, kv_dtype: torch.dtype, options: dict[str, Any]) -> torch.Tensor:
        grid = token_grid(q.shape[1], options.get("activations_shape"), options.get("original_shape"))
        self.runtime.check_canvas(options.get("original_shape"))

        def attention(qq: torch.Tensor, kk: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
            return stock_attention(qq, kk, vv, options, self.preferred)

        return self.runtime.attend(q, grid, self.layer, self.module.to_k, self.module.to_v, kv_dtype, attention,
                                   int(options.get("n_heads", 1)))

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
    ) -> torch.Tensor:
        spans = row_spans(q.shape[0], extra_options.get("cond_or_uncond"))
        if not any(cond for _, _, cond in spans) or not self.runtime.blend.blends(q.shape[1], self.level):
            return self.attend(q, k, v, extra_options)  # this layer attends to the sampler's prompt, as stock
        if len(spans) == 1:
            return self._regional(q, k.dtype, extra_options)
        if self.previous is not None:  # a foreign patch may rely on the full batch: give it that, then overwrite
            out = self.previous(q, k, v, extra_options)
            for start, end, cond in spans:
                if cond:
                    out[start:end] = self._regional(q[start:end], k.dtype, extra_options)
            return out
        parts = [
            self._regional(q[s:e], k.dtype, extra_options)
            if cond
            else self.attend(q[s:e], k[s:e], v[s:e], extra_options)
            for s, e, cond in spans
        ]
        return torch.cat(parts)


def install_regional(model: ModelPatcher, runtime: RegionalRuntime, layers: list[LayerSpec]) -> Any:
    """A clone of `model` (ModelPatcher) whose cross-attention layers blend the regions of `runtime`."""
    levels = layer_levels(model, layers) if runtime.blend.needs_levels else {}
    patched = model.clone()
    key = f"r2moe_regional_{next(_ids)}"
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, key, RunResetWrapper(runtime))

    def make_patch(layer: LayerSpec, module: Any, previous: Any, preferred: Any) -> RegionalAttentionPatch:
        return RegionalAttentionPatch(runtime, layer, module, previous, preferred, levels.get(layer.name, 0))

    return install_attn2_patches(patched, layers, make_patch)


def layer_levels(model: ModelPatcher, layers: list[LayerSpec]) -> dict[str, int]:
    """Each layer's grid level in the model's UNet (0: its finest attention grid), for `finest_grids`."""
    return grid_levels(model.get_model_object("diffusion_model"), [layer.name for layer in layers])


def layout_for_bank(layout: Any, bank: ExpertBank) -> Layout:
    """The layout checked against the bank: every region token must be one of its concepts."""
    try:
        return validate_layout(layout, [c.token for c in bank.concepts])
    except InvalidInputError as err:
        raise InvalidInputError(
            f"{err}\n(The layout was checked against the connected bank: train the missing concepts into it, or "
            "fix the layout's region prompts and tokens.)"
        ) from err


@dataclass(frozen=True)
class RegionPrompts:
    """A checked layout and its encoded prompts: one encoding serves several patches (box masks, then SAM's).
    `concept_positions[i]`: where region i's concept tokens sit in its encoded prompt (for attention masks)."""

    layout: Layout
    background: torch.Tensor
    regions: tuple[torch.Tensor, ...]
    concept_positions: tuple[tuple[int, ...], ...] = ()


def prepare_regions(
    model: ModelPatcher, clip: CLIP, bank: ExpertBank, layout: Any, allow_other_weights: bool,
    blend: BlendSettings | None = None,
) -> RegionPrompts:
    """Check that bank, model, CLIP, layout and blend settings fit together, then encode the layout's prompts."""
    check_bank_serves(bank, model, clip, allow_other_weights)
    if blend is not None and blend.needs_levels:
        layer_levels(model, list(bank.layers))  # a UNet whose grids cannot be told apart is refused here
    checked = layout_for_bank(layout, bank)
    if not checked.regions:
        LOGGER.warning("R2MoE: the layout has no regions; the image follows the background prompt only.")
    concept_clip = clip_with_concepts(clip, bank)
    return RegionPrompts(
        checked,
        encode_prompt(concept_clip, checked.background),
        tuple(encode_prompt(concept_clip, region.prompt) for region in checked.regions),
        tuple(concept_positions(concept_clip, region.prompt) for region in checked.regions),
    )


def apply_regions(
    model: ModelPatcher,
    bank: ExpertBank,
    prompts: RegionPrompts,
    strength: float,
    expert_strength: float = 1.0,
    masks: torch.Tensor | None = None,
    blend: BlendSettings | None = None,
    recorder: ConceptAttention | None = None,
) -> Any:
    """A clone of `model` whose cross-attention follows the layout (box masks unless `masks` are given); with a
    `recorder`, its concept-token attention is added up while `recorder.recording` is on."""
    runtime = RegionalRuntime(
        bank, prompts.layout, prompts.background, list(prompts.regions), strength, expert_strength, masks, blend
    )
    runtime.recorder = recorder
    return install_regional(model, runtime, list(bank.layers))
