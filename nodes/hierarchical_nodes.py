"""R2MoEHierarchicalSampler: two-stage regional sampling in one node: box masks until step T, SAM masks after.

It is exactly this graph of stock nodes, so either form gives the same latent for the same seed:

    R2MoERegionalApply (boxes) -> KSamplerAdvanced 0..T, leftover noise
    -> KSamplerAdvanced euler T..T+1, no noise, full denoise (= the x0 estimate at step T) -> VAEDecode
    -> R2MoESAMRefine -> R2MoERegionalApply (masks) -> KSamplerAdvanced T..end, no noise

The x0 estimate is the denoiser's prediction D(x_T, σ_T) with the box-mask model: one extra model call, the
freshest estimate there is at step T. switch_at = 1 skips SAM and equals R2MoERegionalApply + KSampler.
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
                "Multi-concept sampling as in the paper: regions follow their boxes until switch_at, then the "
                "current x0 estimate is decoded, SAM segments each box, and sampling finishes with the SAM masks. "
                "Same result as two stock KSamplerAdvanced nodes around R2MoE SAM Refine."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The checkpoint's MODEL (not yet regional: this node applies it)."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP; it encodes the layout's prompts."),
                io.Vae.Input("vae", tooltip="Decodes the x0 estimate for SAM."),
                Bank.Input("bank", tooltip=BANK_TIP),
                Layout.Input("layout", tooltip=LAYOUT_TIP),
                Sam.Input("sam", optional=True, tooltip=SAM_TIP + " Optional: without one, regions follow their "
                          "boxes all the way (the same as Regional Apply + KSampler)."),
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
                    tooltip="Fraction of the steps sampled with box masks before SAM takes over (1 = boxes only).",
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
                io.Image.Output(display_name="x0_image", tooltip="The decoded x0 estimate SAM segmented."),
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
        mask_feather=0.0,
    ) -> io.NodeOutput:  # fmt: skip
        settings = SamplerSettings(seed, steps, cfg, sampler_name, scheduler, positive, negative, denoise)
        later = strength if strength_after_switch < 0 else strength_after_switch
        blend = BlendSettings(min_tokens, mask_grow, mask_feather)
        regional = RegionalSettings(strength, expert_strength, later, blend)
        refine = RefineOptions(min_coverage=min_coverage, clip_to_box=clip_to_box, dilate_px=dilate)
        switch = switch_step(steps, switch_at)
        if sam is None and switch < steps:
            LOGGER.info("R2MoE Hierarchical Sampler: no SAM connected, so the regions keep their boxes to the end")
            switch = steps
        stages = HierarchicalStages(model, bank, prepare_regions(model, clip, bank, layout, allow_other_weights),
                                    regional)
        if switch >= steps:
            return io.NodeOutput(*stages.boxes_only(vae, latent_image, settings))
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

    def regional_model(self, masks: torch.Tensor | None = None) -> Any:
        """Box masks with η = strength; given (SAM's) masks, with η = strength_after_switch."""
        strength = self.regional.strength if masks is None else self.regional.strength_after_switch
        return apply_regions(self.model, self.bank, self.prompts, strength, self.regional.expert_strength, masks,
                             self.regional.blend)

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


HIERARCHICAL_NODES: list[type[io.ComfyNode]] = [R2MoEHierarchicalSampler]
