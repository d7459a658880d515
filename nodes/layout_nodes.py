"""Layout nodes: plan a multi-concept layout from a prompt, read one from JSON, and preview it.

API keys never enter a widget (widget values are saved into the workflow JSON): the LLM planner takes the NAME
of an environment variable and reads the key from there.
"""

from __future__ import annotations

import comfy.model_management
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..r2moe_core.compose.layout import (
    CANVAS_MULTIPLE,
    MAX_CANVAS,
    boxes_from_pixels,
    layout_from_json,
    layout_to_json,
    validate_layout,
    with_boxes,
)
from ..r2moe_core.compose.layout_preview import draw_layout, layout_masks
from ..r2moe_core.compose.planning.llm_planner import LLMPlanner, check_key_env_name
from ..r2moe_core.compose.planning.planner import check_prompt_tokens
from ..r2moe_core.compose.planning.rule_planner import RuleBasedPlanner
from ..r2moe_core.errors import InvalidInputError, PlannerCancelledError
from ..r2moe_core.log import LOGGER
from .host.model_folders import planner_cache_dir
from .types import LAYOUT_TIP, Bank, Layout

CATEGORY = "R2MoE/regional"
PLANNERS = ("rule-based", "llm")
DEFAULT_BASE_URL = "http://127.0.0.1:11434/v1"  # Ollama's OpenAI-compatible endpoint
_EXAMPLE = """{
  "version": 1, "width": 512, "height": 512, "background": "a beach at sunset",
  "regions": [
    {"prompt": "a <dog1> dog", "box": [0.04, 0.1, 0.48, 0.95]},
    {"prompt": "a <cat1> cat", "box": [0.52, 0.1, 0.96, 0.95]}
  ]
}"""


class R2MoELayoutPlanner(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoELayoutPlanner",
            display_name="R2MoE Layout Planner",
            category=CATEGORY,
            description=(
                "Split a multi-concept prompt into a background prompt and one boxed region per concept token "
                "of the bank. 'rule-based' needs nothing else; 'llm' asks an OpenAI-compatible server (Ollama, "
                "LM Studio, vLLM, OpenAI) and caches its answers."
            ),
            inputs=[
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="<dog1> and <cat1> playing on a beach at sunset",
                    tooltip="The whole scene; each trigger token of the bank becomes one boxed region.",
                ),
                Bank.Input("bank", tooltip="Tells the planner which trigger tokens are concepts."),
                io.Int.Input(
                    "width",
                    default=512,
                    min=64,
                    max=MAX_CANVAS,
                    step=CANVAS_MULTIPLE,
                    tooltip="Image width in pixels (the size you will sample at).",
                ),
                io.Int.Input(
                    "height",
                    default=512,
                    min=64,
                    max=MAX_CANVAS,
                    step=CANVAS_MULTIPLE,
                    tooltip="Image height in pixels (the size you will sample at).",
                ),
                io.Combo.Input(
                    "planner",
                    options=list(PLANNERS),
                    default="rule-based",
                    tooltip="rule-based: offline and deterministic. llm: a chat model plans the boxes.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFF,
                    control_after_generate=False,
                    tooltip="Sent to the LLM (part of its cache key); fixed: the same prompt gives the same layout.",
                ),
                io.String.Input(
                    "base_url",
                    default=DEFAULT_BASE_URL,
                    optional=True,
                    tooltip="LLM only: the server's OpenAI-compatible base URL (usually ends in /v1).",
                ),
                io.String.Input(
                    "model",
                    default="",
                    optional=True,
                    tooltip="LLM only: the model name the server serves (e.g. qwen2.5:7b).",
                ),
                io.String.Input(
                    "api_key_env",
                    default="OPENAI_API_KEY",
                    optional=True,
                    tooltip="LLM only: NAME of the environment variable holding the API key (never "
                    "the key itself). Empty or unset: no key, fine for local servers.",
                ),
                io.Float.Input(
                    "timeout_s",
                    default=60.0,
                    min=1.0,
                    max=600.0,
                    step=1.0,
                    optional=True,
                    tooltip="LLM only: seconds to wait for an answer.",
                ),
            ],
            outputs=[
                Layout.Output(
                    display_name="layout",
                    tooltip="The planned layout, for Regional Apply or the Hierarchical Sampler.",
                ),
                io.String.Output(
                    display_name="layout_json",
                    tooltip="The same layout as JSON: paste it into Layout From JSON to edit it."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, planner: str | None = None) -> bool | str:
        """The pinned host does not check posted combo values: refuse an unknown planner when the graph is queued."""
        if planner is not None and planner not in PLANNERS:
            return f"planner must be one of {', '.join(PLANNERS)}, got {str(planner)[:200]!r}."
        return True

    @classmethod
    def execute(
        cls,
        prompt,
        bank,
        width,
        height,
        planner,
        seed,
        base_url=DEFAULT_BASE_URL,
        model="",
        api_key_env="OPENAI_API_KEY",
        timeout_s=60.0,
    ) -> io.NodeOutput:
        tokens = [c.token for c in bank.concepts]
        if planner == "rule-based":
            layout = RuleBasedPlanner().plan(prompt, tokens, width, height, seed)
        elif planner == "llm":
            llm = LLMPlanner(base_url, model, check_key_env_name(api_key_env), timeout_s, cache_dir=planner_cache_dir(),
                             should_stop=comfy.model_management.processing_interrupted)
            try:
                layout = llm.plan(prompt, tokens, width, height, seed)
            except PlannerCancelledError:
                # Cancel pressed while the server was being asked: report it the way the host reports any cancel.
                comfy.model_management.throw_exception_if_processing_interrupted()
                raise
        else:
            raise InvalidInputError(f"planner must be one of {', '.join(PLANNERS)}, got {planner!r}.")
        warnings = check_prompt_tokens(prompt, tokens, layout)
        for warning in warnings:
            LOGGER.warning("R2MoE layout planner: %s", warning)
        text = layout_to_json(layout, indent=2)
        shown = "\n".join([*(f"warning: {w}" for w in warnings), text])
        return io.NodeOutput(layout, text, ui={"text": [shown], "r2moe_layout": [text]})


# Newer ComfyUI has a core bounding-box socket (pixel boxes from its box widget and detectors): take it where it
# exists, without needing it on hosts that predate it.
BOX_SOCKET = getattr(io, "BoundingBox", None)


def _box_inputs() -> list:
    if BOX_SOCKET is None:
        return []
    return [
        BOX_SOCKET.Input(
            "boxes",
            optional=True,
            force_input=True,
            tooltip="Core bounding boxes in pixels (one box or a list): they replace the regions' boxes in order.",
        )
    ]


class R2MoELayoutFromJSON(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoELayoutFromJSON",
            display_name="R2MoE Layout From JSON",
            category=CATEGORY,
            description=(
                "A layout written by hand (or edited from a planner's layout_json): background prompt, canvas "
                "size and regions with boxes [x0, y0, x1, y1] as fractions of the image."
            ),
            inputs=[
                io.String.Input(
                    "layout_json",
                    multiline=True,
                    default=_EXAMPLE,
                    tooltip="The layout as JSON (edit it here or with the box editor below); boxes are [x0, y0, x1, y1]"
                    " as fractions of the image.",
                ),
                Bank.Input("bank", optional=True, tooltip="If connected, every region token must be in the bank."),
                io.Image.Input(
                    "reference_image",
                    optional=True,
                    tooltip="Shown under the boxes in the editor after a run (for example a draft of the image); "
                    "the layout does not use it.",
                ),
                *_box_inputs(),
            ],
            outputs=[Layout.Output(display_name="layout", tooltip="The checked layout.")],
        )

    @classmethod
    def execute(cls, layout_json, bank=None, reference_image=None, boxes=None) -> io.NodeOutput:
        known = None if bank is None else [c.token for c in bank.concepts]
        layout = layout_from_json(layout_json, known)
        if boxes is not None:
            layout = with_boxes(layout, boxes_from_pixels(boxes, layout.width, layout.height))
        if reference_image is None:
            return io.NodeOutput(layout)
        saved = ui.PreviewImage(reference_image[:1], cls=cls).as_dict()["images"]
        return io.NodeOutput(layout, ui={"r2moe_reference": saved})


class R2MoELayoutPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoELayoutPreview",
            display_name="R2MoE Layout Preview",
            category=CATEGORY,
            description="Draw a layout's boxes and prompts over a blank canvas or an image, and give its box masks.",
            inputs=[
                Layout.Input("layout", tooltip=LAYOUT_TIP),
                io.Image.Input("image", optional=True, tooltip="Drawn under the boxes, resized to the layout canvas."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The boxes and their prompts drawn over the canvas."),
                io.Mask.Output(display_name="masks", tooltip="One box mask per region, in the layout's order."),
            ],
        )

    @classmethod
    def execute(cls, layout, image=None) -> io.NodeOutput:
        layout = validate_layout(layout)
        if image is None:
            frames = [draw_layout(layout)]
        else:
            frames = [draw_layout(layout, frame.detach().float().cpu().numpy()) for frame in image]
        pictures = torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)
        return io.NodeOutput(pictures, torch.from_numpy(layout_masks(layout)))


LAYOUT_NODES: list[type[io.ComfyNode]] = [R2MoELayoutPlanner, R2MoELayoutFromJSON, R2MoELayoutPreview]
