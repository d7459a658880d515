"""Regional multi-concept sampling (HLAG): a MODEL whose cross-attention follows a layout.

Each cross-attention layer gets an attn2_replace patch (wrapping whatever patch held the slot before, like the
bank patch does). The conditional rows' attention is replaced by the regional blend of r2moe_core.regional; the
unconditional rows run the stock (or previous) attention untouched. An OUTER_SAMPLE wrapper marks each sampling
run, so region K/V are computed once per run and layer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import comfy.patcher_extension
import torch
from comfy_api.latest import io

from ..r2moe_core.bank import ExpertBank
from ..r2moe_core.errors import InvalidInputError
from ..r2moe_core.layers import LayerSpec
from ..r2moe_core.layout import Layout as LayoutData
from ..r2moe_core.layout import validate_layout
from ..r2moe_core.log import LOGGER
from ..r2moe_core.regional import RegionalRuntime, row_spans, token_grid
from .clip_tokens import clip_with_concepts
from .host import check_bank_fits, token_dim
from .patch import _SharedOnClone, _stock_attention
from .types import Bank, Layout

CATEGORY = "R2MoE/regional"
_ids = itertools.count()


class RunResetWrapper(_SharedOnClone):
    """OUTER_SAMPLE wrapper: a new sampling run starts with fresh region K/V and frees them afterwards."""

    def __init__(self, runtime: RegionalRuntime) -> None:
        self.runtime = runtime

    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        self.runtime.reset()
        try:
            return executor(*args, **kwargs)
        finally:
            self.runtime.reset()


class RegionalAttentionPatch(_SharedOnClone):
    """attn2_replace for one layer: conditional rows get the regional blend, the rest what they had before."""

    def __init__(
        self, runtime: RegionalRuntime, layer: LayerSpec, module: Any, previous: Any = None, preferred: Any = None
    ) -> None:
        self.runtime = runtime
        self.layer = layer
        self.module = module  # the layer's CrossAttention: its to_k/to_v are the base projections
        self.previous = previous
        self.preferred = preferred

    def _base(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        if self.previous is not None:
            return self.previous(q, k, v, options)
        return _stock_attention(q, k, v, options, self.preferred)

    def _regional(self, q: torch.Tensor, kv_dtype: torch.dtype, options: dict[str, Any]) -> torch.Tensor:
        grid = token_grid(q.shape[1], options.get("activations_shape"), options.get("original_shape"))
        self.runtime.check_canvas(options.get("original_shape"))

        def attention(qq: torch.Tensor, kk: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
            return _stock_attention(qq, kk, vv, options, self.preferred)

        return self.runtime.attend(q, grid, self.layer, self.module.to_k, self.module.to_v, kv_dtype, attention)

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict[str, Any]
    ) -> torch.Tensor:
        spans = row_spans(q.shape[0], extra_options.get("cond_or_uncond"))
        if not any(cond for _, _, cond in spans):
            return self._base(q, k, v, extra_options)
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
            else _stock_attention(q[s:e], k[s:e], v[s:e], extra_options, self.preferred)
            for s, e, cond in spans
        ]
        return torch.cat(parts)

    def __getattr__(self, name: str) -> Any:
        # Same courtesy as the bank patch: method calls of other packs reach the patch we wrapped.
        previous = self.__dict__.get("previous")
        if previous is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(previous, name)


def install_regional(model: Any, runtime: RegionalRuntime, layers: list[LayerSpec]) -> Any:
    """A clone of `model` (ModelPatcher) whose cross-attention layers blend the regions of `runtime`."""
    patched = model.clone()
    key = f"r2moe_regional_{next(_ids)}"
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, key, RunResetWrapper(runtime))
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for layer in layers:
        block, number, index = layer.block_key
        previous = existing.get((block, number, index)) or existing.get((block, number))
        module = patched.get_model_object(f"diffusion_model.{layer.name}")
        preferred = getattr(module, "comfy_attention", None)
        patched.set_model_attn2_replace(
            RegionalAttentionPatch(runtime, layer, module, previous, preferred), block, number, index
        )
    return patched


def _encode(clip: Any, text: str) -> torch.Tensor:
    """[1, tokens, dim] text context, exactly as CLIPTextEncode makes it (no hooks)."""
    return clip.encode_from_tokens(clip.tokenize(text))


def layout_for_bank(layout: Any, bank: ExpertBank) -> LayoutData:
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
    """A checked layout and its encoded prompts: one encoding serves several patches (box masks, then SAM's)."""

    layout: LayoutData
    background: torch.Tensor
    regions: tuple[torch.Tensor, ...]


def prepare_regions(model: Any, clip: Any, bank: ExpertBank, layout: Any, allow_other_weights: bool) -> RegionPrompts:
    """Check that bank, model, CLIP and layout fit together, then encode the layout's prompts."""
    for warning in check_bank_fits(bank, model, allow_other_weights):
        LOGGER.warning("R2MoE: %s", warning)
    if bank.concepts and token_dim(clip) != bank.token_dim:
        raise InvalidInputError(
            f"The CLIP input has {token_dim(clip)}-wide token embeddings, the bank's concepts {bank.token_dim}; "
            "connect the CLIP of the checkpoint the bank was made for."
        )
    checked = layout_for_bank(layout, bank)
    if not checked.regions:
        LOGGER.warning("R2MoE: the layout has no regions; the image follows the background prompt only.")
    concept_clip = clip_with_concepts(clip, bank)
    return RegionPrompts(
        checked,
        _encode(concept_clip, checked.background),
        tuple(_encode(concept_clip, region.prompt) for region in checked.regions),
    )


def apply_regions(
    model: Any,
    bank: ExpertBank,
    prompts: RegionPrompts,
    strength: float,
    expert_strength: float = 1.0,
    masks: torch.Tensor | None = None,
) -> Any:
    """A clone of `model` whose cross-attention follows the layout (box masks unless `masks` are given)."""
    runtime = RegionalRuntime(
        bank, prompts.layout, prompts.background, list(prompts.regions), strength, expert_strength, masks
    )
    return install_regional(model, runtime, list(bank.layers))


class R2MoERegionalApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoERegionalApply",
            display_name="R2MoE Regional Apply",
            category=CATEGORY,
            description=(
                "Multi-concept composition (HLAG): in every cross-attention layer the background prompt attends "
                "with the base model, each region prompt with its own expert mixture, blended by the region boxes "
                "(or masks). Connect the MODEL to a stock KSampler; its positive prompt is replaced by the layout, "
                "the negative prompt stays as it is."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP; it encodes the layout's prompts."),
                Bank.Input("bank"),
                Layout.Input("layout"),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=2.0,
                    step=0.05,
                    tooltip="η: how strongly each region replaces the background inside its box (1 = fully; a "
                    "region's own strength in the layout overrides it).",
                ),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="One mask per region in the layout's order ([regions, height, width], any size; from "
                    "R2MoE SAM Refine or any pack's mask batch): used instead of the boxes.",
                ),
                io.Float.Input(
                    "expert_strength",
                    default=1.0,
                    min=-2.0,
                    max=2.0,
                    step=0.05,
                    optional=True,
                    tooltip="Scales every expert's contribution in the regions (0 = concept tokens only).",
                ),
                io.Boolean.Input(
                    "allow_other_weights",
                    default=False,
                    optional=True,
                    tooltip="Use the bank on a fine-tune with the same shape but other weights (like a LoRA).",
                ),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(
        cls, model, clip, bank, layout, strength, mask=None, expert_strength=1.0, allow_other_weights=False
    ) -> io.NodeOutput:
        prompts = prepare_regions(model, clip, bank, layout, allow_other_weights)
        return io.NodeOutput(apply_regions(model, bank, prompts, strength, expert_strength, mask))  # masks checked


REGIONAL_NODES: list[type[io.ComfyNode]] = [R2MoERegionalApply]
