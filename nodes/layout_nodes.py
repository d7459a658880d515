"""Layout nodes: plan a multi-concept layout from a prompt, read one from JSON, and preview it.

API keys never enter a widget (widget values are saved into the workflow JSON): the LLM planner takes the NAME
of an environment variable and reads the key from there.
"""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..r2moe_core.compose.layout import CANVAS_MULTIPLE, MAX_CANVAS, layout_from_json, layout_to_json, validate_layout
from ..r2moe_core.compose.layout_preview import draw_layout, layout_masks
from ..r2moe_core.compose.llm_planner import LLMPlanner, check_key_env_name
from ..r2moe_core.compose.rule_planner import RuleBasedPlanner
from ..r2moe_core.errors import InvalidInputError
from .model_folders import planner_cache_dir
from .types import Bank, Layout

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
                io.String.Input("prompt", multiline=True, default="<dog1> and <cat1> playing on a beach at sunset"),
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
                    "seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Sent to the LLM (and part of its cache key)."
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
            outputs=[Layout.Output(display_name="layout"), io.String.Output(display_name="layout_json")],
        )

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
            llm = LLMPlanner(base_url, model, check_key_env_name(api_key_env), timeout_s, cache_dir=planner_cache_dir())
            layout = llm.plan(prompt, tokens, width, height, seed)
        else:
            raise InvalidInputError(f"planner must be one of {', '.join(PLANNERS)}, got {planner!r}.")
        return io.NodeOutput(layout, layout_to_json(layout, indent=2))


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
                io.String.Input("layout_json", multiline=True, default=_EXAMPLE),
                Bank.Input("bank", optional=True, tooltip="If connected, every region token must be in the bank."),
            ],
            outputs=[Layout.Output(display_name="layout")],
        )

    @classmethod
    def execute(cls, layout_json, bank=None) -> io.NodeOutput:
        known = None if bank is None else [c.token for c in bank.concepts]
        return io.NodeOutput(layout_from_json(layout_json, known))


class R2MoELayoutPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoELayoutPreview",
            display_name="R2MoE Layout Preview",
            category=CATEGORY,
            description="Draw a layout's boxes and prompts over a blank canvas or an image, and give its box masks.",
            inputs=[
                Layout.Input("layout"),
                io.Image.Input("image", optional=True, tooltip="Drawn under the boxes, resized to the layout canvas."),
            ],
            outputs=[io.Image.Output(display_name="image"), io.Mask.Output(display_name="masks")],
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
