"""Regional (HLAG: hierarchical layout-aware generation) sampling on the world UNet, with the pack's own code.

The blend, the per-grid masks and the region K/V with their expert mixtures come from
`r2moe_core.compose.regional_attention.RegionalRuntime`, the object the ComfyUI patch drives; this module only
plays the host: it hands the UNet's `regional` hook the conditional rows (one runtime per batch row, since every
row has its own layout); `sampler.euler_cfg` samples and can switch masks at a step from the decoded x0
estimate (the SAM step). No SAM weights exist offline, so the switch uses `colour_segmenter`, a deterministic
stand-in, through `r2moe_core.compose.masks.mask_refinement.refine_masks` (the pack's rule for empty masks, dilation
and clipping).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from r2moe_core.bank.attention_targets import LayerSpec
from r2moe_core.bank.expert_bank import ExpertBank
from r2moe_core.compose.masks.mask_refinement import PixelBox, Segment
from r2moe_core.compose.planning.rule_planner import RuleBasedPlanner
from r2moe_core.compose.regional_attention import RegionalRuntime

from .text import TextEncoder
from .unet import Attention

LOG = logging.getLogger("r2moe.bench.multiconcept")

SEGMENTER = "colour-difference segmenter on the decoded x0 estimate (stand-in for SAM, which has no offline weights)"
BORDER_PX = 2  # width of the box's inner ring whose median colour is taken as the local background
COLOUR_FLOOR = 40.0  # RGB distance (0-255 scale) a pixel must exceed, plus twice the ring's own spread


class RowRegions:
    """The world UNet's `regional` hook for a batch: row i attends as `runtimes[i]` says (its own layout)."""

    def __init__(self, layers: Sequence[LayerSpec], runtimes: Sequence[RegionalRuntime],
                 levels: dict[str, int] | None = None) -> None:
        self.layers = {layer.name: layer for layer in layers}
        self.runtimes = list(runtimes)
        self.levels = levels or {}  # `grid_levels` of the UNet; needed when a runtime's blend has finest_grids
        if any(r.blend.needs_levels for r in self.runtimes) and not self.levels:
            raise ValueError("finest_grids needs the UNet's grid levels (r2moe_core.compose.grid_levels)")

    def __call__(self, name: str, q: torch.Tensor, to_k: torch.nn.Module, to_v: torch.nn.Module,
                 attention: Attention, grid: tuple[int, int]) -> torch.Tensor | None:
        if q.shape[0] != len(self.runtimes):
            raise ValueError(f"{q.shape[0]} conditional rows for {len(self.runtimes)} regional runtimes")
        if not all(r.blend.blends(q.shape[1], self.levels.get(name, 0)) for r in self.runtimes):
            return None  # a layer the blend leaves out attends to the plain prompt, as the patch does
        layer = self.layers[name]
        heads = getattr(getattr(attention, "__self__", None), "heads", 1)  # the layer's CrossAttention.attend
        return torch.cat([runtime.attend(q[i:i + 1], grid, layer, to_k, to_v, q.dtype, attention, heads)
                          for i, runtime in enumerate(self.runtimes)])


def planned_regions(text: TextEncoder, bank: ExpertBank, tokens: dict[str, torch.Tensor], prompts: Sequence[str],
                    size: int, strength: float = 1.0) -> RowRegions:
    """HLAG as the pack runs it on a prompt by default: the rule planner boxes every trigger the prompt names (a
    lone concept gets a half-width box, on the side its clause names or centred), each box attends its region
    prompt through its own expert mixture and the rest attends the scene words with base weights; a prompt that
    names no concept has no region and is drawn from its scene words alone, with no expert."""
    planner = RuleBasedPlanner()
    layouts = [planner.plan(prompt, list(tokens), size, size, seed=0) for prompt in prompts]
    backgrounds = text([layout.background for layout in layouts], tokens)
    region_prompts = [region.prompt for layout in layouts for region in layout.regions]
    encoded = text(region_prompts, tokens) if region_prompts else None
    runtimes, start = [], 0
    for i, layout in enumerate(layouts):
        own = [encoded[j:j + 1] for j in range(start, start + len(layout.regions))]  # none: `encoded` unread
        start += len(layout.regions)
        runtimes.append(RegionalRuntime(bank, layout, backgrounds[i:i + 1], own, strength))
    return RowRegions(bank.layers, runtimes)


class LoraRegions(RegionalRuntime):
    """The regional-LoRA stack users build today: the same masks and blend, but each region's K/V carry its own
    concept's LoRA (no gate, no bank) instead of an expert mixture."""

    def __init__(self, loras: Sequence[Callable[[str, torch.Tensor], torch.Tensor]], *args: Any, **kwargs: Any
                 ) -> None:
        super().__init__(*args, **kwargs)
        self.loras = list(loras)

    def region_kv(self, index: int, layer: LayerSpec, context: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        k_name, v_name = layer.projection_names()
        lora = self.loras[index]
        return k + lora(k_name, context).to(k.dtype), v + lora(v_name, context).to(v.dtype)


def switch_step(steps: int, fraction: float) -> int:
    """Index of the step whose x0 estimate refines the masks: they apply after round(fraction * steps) steps."""
    return min(max(round(fraction * steps), 1), steps - 1) - 1


def colour_segmenter(image: np.ndarray) -> Segment:
    """SAM stand-in for one image: for a box, the pixels inside it whose colour differs from the box's border.

    The median colour of the box's inner 2-px ring is taken as the local background (the world's backgrounds are
    flat); a pixel is foreground when its RGB distance to it exceeds 40 plus twice the ring's median spread.
    """
    pixels = torch.from_numpy(np.array(image, dtype=np.float32))
    height, width = pixels.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")

    def segment(box: PixelBox) -> torch.Tensor:
        x0, y0, x1, y1 = box
        inside = (xs + 0.5 >= x0) & (xs + 0.5 < x1) & (ys + 0.5 >= y0) & (ys + 0.5 < y1)
        if not inside.any():
            return torch.zeros(height, width)
        left, right = int(xs[inside].min()), int(xs[inside].max())
        top, bottom = int(ys[inside].min()), int(ys[inside].max())
        ring = inside & ((xs < left + BORDER_PX) | (xs > right - BORDER_PX) | (ys < top + BORDER_PX)
                         | (ys > bottom - BORDER_PX))
        border = pixels[ring]
        colour = border.median(0).values
        spread = float((border - colour).norm(dim=-1).median())
        distance = (pixels - colour).norm(dim=-1)
        return ((distance > COLOUR_FLOOR + 2 * spread) & inside).float()

    return segment
