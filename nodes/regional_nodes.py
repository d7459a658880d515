"""R2MoERegionalApply: regional multi-concept composition for the stock KSampler."""

from __future__ import annotations

from comfy_api.latest import io

from ..r2moe_core.compose.regional_attention import MAX_GRID_LEVELS, BlendSettings
from .host.regional_patch import apply_regions, prepare_regions
from .types import BANK_TIP, LAYOUT_TIP, Bank, Layout

CATEGORY = "R2MoE/regional"


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
                io.Model.Input(
                    "model",
                    tooltip="The checkpoint's MODEL (without R2MoE Apply Bank: this node adds the experts).",
                ),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP; it encodes the layout's prompts."),
                Bank.Input("bank", tooltip=BANK_TIP),
                Layout.Input("layout", tooltip=LAYOUT_TIP),
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
                *blend_inputs(),
            ],
            outputs=[
                io.Model.Output(
                    display_name="model",
                    tooltip="A MODEL whose cross-attention follows the layout; connect it to a stock KSampler.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls, model, clip, bank, layout, strength, mask=None, expert_strength=1.0, allow_other_weights=False,
        min_tokens=0, mask_grow=0.0, mask_feather=0.0, finest_grids=0,
    ) -> io.NodeOutput:  # fmt: skip
        blend = BlendSettings(min_tokens, mask_grow, mask_feather, finest_grids)  # checked before any encoding
        prompts = prepare_regions(model, clip, bank, layout, allow_other_weights, blend)
        return io.NodeOutput(apply_regions(model, bank, prompts, strength, expert_strength, mask, blend))


def blend_inputs() -> list[io.Input]:
    """Where regions blend and how soft their edges are (`BlendSettings`), shared with the hierarchical sampler."""
    return [
        io.Int.Input(
            "min_tokens", default=0, min=0, max=1 << 20, optional=True,
            tooltip="Blend only in layers with at least this many image tokens; smaller layers follow the sampler's "
            "prompt as without regions. 0 = every layer; 256 = the R2MoE reference code's rule (at 512 px it skips "
            "SD1.5's 8x8 middle block). A token count means other layers at other image sizes: finest_grids does not.",
        ),
        io.Float.Input(
            "mask_grow", default=0.0, min=0.0, max=0.5, step=0.01, optional=True,
            tooltip="Grow each region's mask by this fraction of the image's longer side (overlaps are shared).",
        ),
        io.Float.Input(
            "mask_feather", default=0.0, min=0.0, max=0.5, step=0.01, optional=True,
            tooltip="Soften mask edges: Gaussian σ as a fraction of the image's longer side (0 = hard edges).",
        ),
        io.Int.Input(
            "finest_grids", default=0, min=0, max=MAX_GRID_LEVELS, optional=True,
            tooltip="Blend only in the N finest attention grids of the UNet; coarser grids, where the whole "
            "picture's layout is decided, follow the sampler's prompt. 0 = every grid. Means the same at any image "
            "size and in every family (2 on SD1.5: the 64x64 and 32x32 grids at 512 px; 3: the reference code's "
            "rule there).",
        ),
    ]  # fmt: skip


REGIONAL_NODES: list[type[io.ComfyNode]] = [R2MoERegionalApply]
