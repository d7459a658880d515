"""R2MoERegionalApply: regional multi-concept composition for the stock KSampler."""

from __future__ import annotations

from comfy_api.latest import io

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
        cls, model, clip, bank, layout, strength, mask=None, expert_strength=1.0, allow_other_weights=False
    ) -> io.NodeOutput:
        prompts = prepare_regions(model, clip, bank, layout, allow_other_weights)
        return io.NodeOutput(apply_regions(model, bank, prompts, strength, expert_strength, mask))  # masks checked


REGIONAL_NODES: list[type[io.ComfyNode]] = [R2MoERegionalApply]
