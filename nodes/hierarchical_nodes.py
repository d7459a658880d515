"""R2MoEHierarchicalSampler: two-stage regional sampling in one node: box masks until step T, refined masks after.

With SAM masks it is exactly this graph of stock nodes, so either form gives the same latent for the same seed:

    R2MoERegionalApply (boxes) -> KSamplerAdvanced 0..T, leftover noise
    -> KSamplerAdvanced euler T..T+1, no noise, full denoise (= the x0 estimate at step T) -> VAEDecode
    -> R2MoESAMRefine -> R2MoERegionalApply (masks) -> KSamplerAdvanced T..end, no noise

The x0 estimate is the denoiser's prediction D(x_T, σ_T) with the box-mask model: one extra model call, the
freshest estimate there is at step T. With attention masks no segmentation model is needed: steps 0..T record
where each region's concept tokens attend (`r2moe_core.compose.masks.attention_masks`), and those maps become the
masks of steps T..end (no extra model call, no decode). switch_at = 1, or the `boxes` source, equals
R2MoERegionalApply + KSampler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..r2moe_core.compose.layout import box_masks
from ..r2moe_core.compose.masks.attention_masks import (
    AttentionMaskOptions,
    ConceptAttention,
    attention_picture,
    masks_from_attention,
)
from ..r2moe_core.compose.masks.mask_refinement import RefineOptions
from ..r2moe_core.compose.regional_attention import BlendSettings
from ..r2moe_core.errors import InvalidInputError
from ..r2moe_core.log import LOGGER
from .host.regional_patch import apply_regions, prepare_regions
from .regional_nodes import blend_inputs
from .sam_nodes import refine_inputs, refine_with_sam
from .types import BANK_TIP, LAYOUT_TIP, SAM_TIP, Bank, Layout, Sam

if TYPE_CHECKING:  # ComfyUI's own classes, for the annotations only
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import VAE

CATEGORY = "R2MoE/regional"
X0_SAMPLER = "euler"  # one Euler step to σ = 0 returns the denoiser's x0 prediction exactly
LATENT_SCALE = 8  # image pixels per latent cell in the SD1.x, SD 2.x and SDXL families
# auto: SAM when one is connected, else boxes. Attention masks are not the fallback: on the benchmark world they
# missed more concepts than boxes did (docs/benchmarks.md, the multi-concept track).
MASK_SOURCES = ("auto", "attention", "sam", "boxes")


def mask_source_for(choice: str, sam: Any, steps: int, switch: int) -> str:
    """Which masks the steps after the switch use; a choice that cannot work is refused before anything runs."""
    if choice not in MASK_SOURCES:
        raise InvalidInputError(f"mask_source {str(choice)[:100]!r} is not one of {', '.join(MASK_SOURCES)}.")
    source = ("sam" if sam is not None else "boxes") if choice == "auto" else choice
    if source == "sam" and sam is None:
        raise InvalidInputError("mask_source is 'sam' but no SAM is connected: connect R2MoE SAM Loader, or choose "
                                "'attention' (no model needed) or 'boxes'.")
    if source == "attention" and switch == 0 and steps > 0:
        raise InvalidInputError("mask_source 'attention' reads the concepts' attention during the steps before "
                                "switch_at, and switch_at 0 leaves none: set switch_at above 0 (e.g. 0.3), or choose "
                                "'boxes'.")
    return "boxes" if switch >= steps else source


def switch_step(steps: int, switch_at: float) -> int:
    """Step index T where box masks give way to SAM masks."""
    if not 0.0 <= switch_at <= 1.0:
        raise InvalidInputError(f"switch_at must be a fraction of the steps in [0, 1], got {switch_at}.")
    return min(max(round(steps * switch_at), 0), steps)


class StagedProgress:
    """One progress bar (with latent previews) over both sampling stages, the x0 decode and SAM."""

    def __init__(self, model: ModelPatcher, total: int) -> None:
        self.total = total
        self.bar = comfy.utils.ProgressBar(total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    def callback(self, offset: int) -> Callable[[int, torch.Tensor, torch.Tensor, int], None]:
        def on_step(step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0) if self.previewer else None
            self.bar.update_absolute(offset + step + 1, self.total, preview)

        return on_step

    def reach(self, value: int) -> None:
        self.bar.update_absolute(value, self.total)


@dataclass(frozen=True)
class SamplerSettings:
    """KSampler's own inputs, as the user set them on the node: one object for every stage's sampling call."""

    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    positive: Any
    negative: Any
    denoise: float


@dataclass(frozen=True)
class StepSpan:
    """Which steps one call samples, as KSamplerAdvanced's inputs: add noise, start and end step, and whether the
    last step goes all the way to σ = 0."""

    add_noise: bool
    start: int | None = None
    last: int | None = None
    full_denoise: bool = False


def ksample(model: ModelPatcher, latent: dict[str, Any], settings: SamplerSettings, span: StepSpan,
            callback: Any) -> dict[str, Any]:
    """What KSampler/KSamplerAdvanced do (nodes.common_ksampler), with our own progress callback."""
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if span.add_noise:
        noise = comfy.sample.prepare_noise(latent_image, settings.seed, latent.get("batch_index"))
    else:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    samples = comfy.sample.sample(
        model, noise, settings.steps, settings.cfg, settings.sampler_name, settings.scheduler, settings.positive,
        settings.negative, latent_image, denoise=settings.denoise, disable_noise=not span.add_noise,
        start_step=span.start, last_step=span.last, force_full_denoise=span.full_denoise,
        noise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=settings.seed,
    )  # fmt: skip
    out = latent.copy()
    out["samples"] = samples
    return out


def decode(vae: VAE, samples: torch.Tensor) -> torch.Tensor:
    """As VAEDecode: [B, H, W, C] images."""
    images = vae.decode(samples)
    if images.ndim == 5:
        images = images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
    return images


class R2MoEHierarchicalSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoEHierarchicalSampler",
            display_name="R2MoE Hierarchical Sampler (HLAG)",
            category=CATEGORY,
            description=(
                "Multi-concept sampling as in the paper: regions follow their boxes until switch_at, then each "
                "region's mask is refined and sampling finishes with the refined masks: from the model's own "
                "attention to the region's concept tokens (no extra model), or from SAM on the decoded x0 estimate "
                "(the same result as two stock KSamplerAdvanced nodes around R2MoE SAM Refine)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The checkpoint's MODEL (not yet regional: this node applies it)."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP; it encodes the layout's prompts."),
                io.Vae.Input("vae", tooltip="Decodes the x0 estimate for SAM (and the final image for boxes)."),
                Bank.Input("bank", tooltip=BANK_TIP),
                Layout.Input("layout", tooltip=LAYOUT_TIP),
                Sam.Input("sam", optional=True, tooltip=SAM_TIP + " Optional: without one, regions keep their boxes "
                          "(mask_source auto), or their masks come from the concepts' attention (attention)."),
                io.Conditioning.Input("positive", tooltip="Replaced by the layout in the regional attention."),
                io.Conditioning.Input("negative", tooltip="The negative prompt, as for KSampler (not regional)."),
                io.Latent.Input(
                    "latent_image",
                    tooltip="The starting latent (an Empty Latent Image for text-to-image).",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                    tooltip="The noise seed, as for KSampler.",
                ),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="Sampling steps, as for KSampler."),
                io.Float.Input(
                    "cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                    tooltip="Classifier-free guidance scale, as for KSampler.",
                ),
                io.Combo.Input(
                    "sampler_name", options=comfy.samplers.SAMPLER_NAMES,
                    tooltip="The sampler, as for KSampler.",
                ),
                io.Combo.Input(
                    "scheduler", options=comfy.samplers.SCHEDULER_NAMES,
                    tooltip="The noise schedule, as for KSampler.",
                ),
                io.Float.Input(
                    "denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                    tooltip="How much of the latent to re-noise (1 = text-to-image), as for KSampler.",
                ),
                io.Float.Input(
                    "switch_at",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Fraction of the steps sampled with box masks before the refined masks take over (1 = "
                    "boxes only).",
                ),
                io.Combo.Input(
                    "mask_source", options=list(MASK_SOURCES), default="auto", optional=True,
                    tooltip="Where the refined masks come from: attention = where each region's concept tokens "
                    "attend during the box steps (no extra model, no extra step); sam = SAM on the decoded x0 "
                    "estimate; boxes = no refinement; auto = SAM if one is connected, else boxes.",
                ),
                io.Float.Input(
                    "attention_margin", default=0.05, min=0.0, max=0.5, step=0.01, optional=True,
                    tooltip="How far past its box an attention mask may reach (fraction of the image's longer side).",
                ),
                io.Float.Input(
                    "strength", default=1.0, min=0.0, max=2.0, step=0.05, tooltip="η, as in R2MoE Regional Apply."
                ),
                io.Float.Input(
                    "strength_after_switch", default=-1.0, min=-1.0, max=2.0, step=0.05, optional=True,
                    tooltip="η once SAM's masks take over (-1 = the same as strength).",
                ),
                io.Float.Input(
                    "expert_strength", default=1.0, min=-2.0, max=2.0, step=0.05, optional=True,
                    tooltip="Scales every expert's contribution in the regions (0 = concept tokens only).",
                ),
                *refine_inputs(),
                io.Boolean.Input(
                    "allow_other_weights", default=False, optional=True,
                    tooltip="Use the bank on a fine-tune with the same shape but other weights (like a LoRA).",
                ),
                *blend_inputs(),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The sampled latent; decode it with VAE Decode."),
                io.Mask.Output(display_name="masks", tooltip="The masks used after the switch (boxes if none)."),
                io.Image.Output(display_name="x0_image", tooltip="What the masks were made from: the decoded x0 "
                                "estimate SAM segmented; with attention masks, each region's recorded attention "
                                "in its own colour; with boxes, the final image."),
            ],
        )

    @classmethod
    def validate_inputs(cls, sampler_name: str | None = None, scheduler: str | None = None) -> bool | str:
        """The pinned host does not check posted combo values; a typo from an API client is named here."""
        for name, value, options in (("sampler_name", sampler_name, comfy.samplers.SAMPLER_NAMES),
                                     ("scheduler", scheduler, comfy.samplers.SCHEDULER_NAMES)):
            if value is not None and value not in options:
                return f"{name} {str(value)[:200]!r} is not one of this ComfyUI's: {', '.join(options)}."
        return True

    @classmethod
    def execute(
        cls, model, clip, vae, bank, layout, positive, negative, latent_image, seed, steps, cfg, sampler_name,
        scheduler, denoise, switch_at, strength, expert_strength=1.0, min_coverage=0.1, clip_to_box=True, dilate=0,
        allow_other_weights=False, sam=None, strength_after_switch=-1.0, min_tokens=0, mask_grow=0.0,
        mask_feather=0.0, mask_source="auto", attention_margin=0.05, finest_grids=0,
    ) -> io.NodeOutput:  # fmt: skip
        settings = SamplerSettings(seed, steps, cfg, sampler_name, scheduler, positive, negative, denoise)
        later = strength if strength_after_switch < 0 else strength_after_switch
        blend = BlendSettings(min_tokens, mask_grow, mask_feather, finest_grids)
        regional = RegionalSettings(strength, expert_strength, later, blend)
        refine = RefineOptions(min_coverage=min_coverage, clip_to_box=clip_to_box, dilate_px=dilate)
        from_attention = AttentionMaskOptions(margin=attention_margin, min_coverage=min_coverage)
        switch = switch_step(steps, switch_at)
        source = mask_source_for(mask_source, sam, steps, switch)
        prompts = prepare_regions(model, clip, bank, layout, allow_other_weights, blend)
        stages = HierarchicalStages(model, bank, prompts, regional)
        if source == "boxes":
            return io.NodeOutput(*stages.boxes_only(vae, latent_image, settings))
        if source == "attention":
            return io.NodeOutput(*stages.boxes_then_attention(latent_image, settings, switch, from_attention))
        return io.NodeOutput(*stages.boxes_then_sam(vae, sam, latent_image, settings, switch, refine))


@dataclass(frozen=True)
class RegionalSettings:
    """How the regions are applied: η before and after the switch to SAM's masks, the experts' scale, where and
    how softly regions blend."""

    strength: float
    expert_strength: float
    strength_after_switch: float
    blend: BlendSettings


@dataclass(frozen=True)
class HierarchicalStages:
    """The sampler's two forms: boxes all the way, or boxes until step T then SAM masks."""

    model: ModelPatcher
    bank: Any
    prompts: Any  # prepared region prompts (`regional_patch.prepare_regions`)
    regional: RegionalSettings

    def regional_model(self, masks: torch.Tensor | None = None, recorder: ConceptAttention | None = None) -> Any:
        """Box masks with η = strength; given (refined) masks, with η = strength_after_switch."""
        strength = self.regional.strength if masks is None else self.regional.strength_after_switch
        return apply_regions(self.model, self.bank, self.prompts, strength, self.regional.expert_strength, masks,
                             self.regional.blend, recorder)

    def boxes_only(self, vae: VAE, latent: dict[str, Any], settings: SamplerSettings) -> tuple[Any, ...]:
        """Exactly R2MoERegionalApply + KSampler."""
        progress = StagedProgress(self.model, settings.steps)
        out = ksample(self.regional_model(), latent, settings, StepSpan(add_noise=True), progress.callback(0))
        image = decode(vae, out["samples"])
        return out, box_masks(self.prompts.layout, int(image.shape[1]), int(image.shape[2])), image

    def boxes_then_sam(self, vae: VAE, sam: Any, latent: dict[str, Any], settings: SamplerSettings, switch: int,
                       refine: RefineOptions) -> tuple[Any, ...]:
        """Box masks for steps 0..T, the x0 estimate at T decoded and segmented by SAM, SAM masks from T on."""
        progress = StagedProgress(self.model, settings.steps + 2)
        box_model, current = self.regional_model(), latent
        if switch > 0:
            current = ksample(box_model, latent, settings, StepSpan(True, 0, switch), progress.callback(0))
        x0_span = StepSpan(add_noise=switch == 0, start=switch, last=switch + 1, full_denoise=True)
        x0 = ksample(box_model, current, replace(settings, sampler_name=X0_SAMPLER), x0_span, None)
        image = decode(vae, x0["samples"])
        progress.reach(switch + 1)
        masks = refine_with_sam(sam, image, self.prompts.layout, refine).masks
        progress.reach(switch + 2)
        rest = StepSpan(add_noise=switch == 0, start=switch, last=None, full_denoise=True)
        out = ksample(self.regional_model(masks), current, settings, rest, progress.callback(switch + 2))
        return out, masks, image

    def boxes_then_attention(self, latent: dict[str, Any], settings: SamplerSettings, switch: int,
                             options: AttentionMaskOptions) -> tuple[Any, ...]:
        """Box masks for steps 0..T while the concept tokens' attention is recorded, its masks from T on."""
        progress = StagedProgress(self.model, settings.steps)
        recorder = ConceptAttention(self.prompts.concept_positions)
        recorder.recording = True
        current = ksample(self.regional_model(recorder=recorder), latent, settings, StepSpan(True, 0, switch),
                          progress.callback(0))
        recorder.recording = False
        samples = latent["samples"]
        height, width = int(samples.shape[-2]) * LATENT_SCALE, int(samples.shape[-1]) * LATENT_SCALE
        maps = recorder.maps()
        if maps is None:  # no layer blended (min_tokens above every layer's size): nothing to read
            LOGGER.warning("R2MoE Hierarchical Sampler: no layer blended regions, so no attention was recorded; the "
                           "regions keep their boxes (lower min_tokens).")
            masks, picture = box_masks(self.prompts.layout, height, width), torch.zeros(height, width, 3)
        else:
            masks = masks_from_attention(maps, self.prompts.layout, height, width, options).masks
            picture = attention_picture(maps, height, width)
        rest = StepSpan(add_noise=False, start=switch, last=None, full_denoise=True)
        out = ksample(self.regional_model(masks), current, settings, rest, progress.callback(switch))
        return out, masks, picture[None]


HIERARCHICAL_NODES: list[type[io.ComfyNode]] = [R2MoEHierarchicalSampler]
