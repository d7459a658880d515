"""Learning a concept inside the graph: R2MoETrainConcept."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..r2moe_core.bank.bank_file import bank_to_tensors
from ..r2moe_core.bank.expert_bank import check_trigger_token, thumbnail_of
from ..r2moe_core.bank.model_family import family_named
from ..r2moe_core.bank.report import short_layer_name
from ..r2moe_core.errors import InvalidInputError
from ..r2moe_core.log import LOGGER
from ..r2moe_core.train.augment import augmented_views
from ..r2moe_core.train.concept_photos import concept_files, load_concept_folder, make_captions, square_resize
from ..r2moe_core.train.concept_run import RunHooks
from ..r2moe_core.train.loss_plot import loss_curve
from ..r2moe_core.train.memory_estimate import GIB
from ..r2moe_core.train.preview import PreviewSettings
from ..r2moe_core.train.request import (
    BANK_VALUE,
    DEFAULT_CAPTION_TEMPLATE,
    MAX_PRIOR_IMAGES,
    MAX_VIEWS,
    ConceptRequest,
)
from ..r2moe_core.train.resume import RunCheckpoint, run_key
from ..r2moe_core.train.step import TrainingData
from ..r2moe_core.train.trainer import DISTILL_MODES, OPTIMIZERS, TrainSettings
from ..r2moe_core.version import __version__
from .host.class_prior_host import class_prior
from .host.model_folders import resume_folder
from .host.model_inspection import check_bank_serves
from .host.training_host import frames_released_on_failure, train_concept
from .host.training_memory import check_training_memory
from .host.training_preview import TrainingPreviews
from .types import Bank, advanced_input, schema_extras

CATEGORY = "R2MoE"
TIMED_STEPS = 5  # steps timed before the log says how long the run will take


def _images(images: torch.Tensor | None, folder: str, resolution: int) -> tuple[list[torch.Tensor], list[str] | None]:
    frames: list[torch.Tensor] = []
    captions = None
    if images is not None:
        frames += [square_resize(img, resolution) for img in images]
    if folder.strip():
        loaded, captions = load_concept_folder(folder.strip())
        frames += [square_resize(img, resolution) for img in loaded]
        if images is not None and captions is not None:
            captions = None  # captions describe the folder only: use the template for the whole set
    if not frames:
        raise InvalidInputError(
            "No training images: connect an IMAGE batch (3 to 7 photos of the concept) or give a folder path."
        )
    return frames, captions


def _report(outcome, name: str, token: str, steps: int, data: str) -> str:
    prune = outcome.prune
    tail = outcome.losses[-50:]
    def names(projections: tuple[str, ...]) -> str:
        return ", ".join(f"{short_layer_name(p.rsplit('.', 1)[0])}.{p[-1]}" for p in projections) or "none"

    kept, removed = names(prune.kept), names(prune.removed)
    advice = prune.advice()
    if advice:
        LOGGER.warning("R2MoE training '%s': %s", name, advice)
    return "\n".join([
        f"learned '{name}' as {token} (task {outcome.bank.num_tasks}) in {outcome.seconds:.1f} s, {steps} steps",
        data,
        f"loss: first {outcome.losses[0]:.4f}, mean of the last 50 steps {sum(tail) / len(tail):.4f}",
        prune.summary(),
        f"kept (layer + k/v): {kept}",
        f"removed: {removed}",
        f"bank grew by {outcome.added_bytes / 1024:.1f} KB of expert weights",
        *([f"warning: {advice}"] if advice else []),
    ])


class R2MoETrainConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoETrainConcept",
            **schema_extras(["dreambooth", "train lora", "personalize", "learn concept"]),
            display_name="R2MoE Train Concept",
            category=CATEGORY,
            description=(
                "Learn a new concept from a few photos as one more expert in the bank, without forgetting the "
                "others. Outputs a new bank (save it with R2MoE Save Bank); the input bank is never changed."
            ),
            is_experimental=True,
            not_idempotent=True,
            inputs=[
                io.Model.Input("model", tooltip="The frozen SD1.x, SD 2.x or SDXL model the bank belongs to."),
                io.Clip.Input("clip", tooltip="Its text encoder (the trigger token embedding is learned through it)."),
                io.Vae.Input("vae", tooltip="Encodes the training photos into latents."),
                Bank.Input("bank", tooltip="The bank to extend (from R2MoE New Bank or Load Bank)."),
                io.String.Input("concept_name", default="my_dog", tooltip="A name for the concept, unique in a bank."),
                io.String.Input("trigger_token", default="<dog1>", tooltip="The word you will write in prompts."),
                io.String.Input("class_word", default="dog", tooltip="What it is; initialises the token embedding."),
                io.Image.Input("images", optional=True, tooltip="3 to 7 photos of the concept (any size)."),
                io.String.Input(
                    "folder", default="", optional=True,
                    tooltip="Or a folder of photos, with an optional caption.txt (one caption per image, sorted).",
                ),
                io.String.Input(
                    "caption_template", default=DEFAULT_CAPTION_TEMPLATE, optional=True,
                    tooltip="Caption used without caption.txt; {token} and {class} are filled in.",
                ),
                io.Int.Input("steps", default=800, min=1, max=100000, tooltip="Optimizer steps (reference: 800)."),
                io.Int.Input("batch_size", default=2, min=1, max=64, tooltip="Images per step (reference: 2)."),
                io.Int.Input("resolution", default=0, min=0, max=2048, step=64,
                             tooltip="Training resolution in pixels; 0 = the model's own: SD1.x 512, SD 2.x 768, "
                                     "SDXL 1024. Peak VRAM measured on an H200 (fp16 UNet, gradient checkpointing "
                                     "on, text encoder weights counted): SD1.x 512 px batch 2 about 4.4 GB, SDXL "
                                     "1024 px batch 1 about 14 GB, so SDXL at 1024 px needs a 16 GB card. Halving "
                                     "the resolution roughly quarters the activations part."),
                io.Float.Input("lr_experts", default=1e-4, min=0.0, max=1.0, step=1e-5,
                               tooltip="Learning rate of the new expert (reference: 1e-4)."),
                io.Float.Input("lr_router", **advanced_input(), default=1e-2, min=0.0, max=1.0, step=1e-4,
                               tooltip="Learning rate of the gate, in gate-score units per step: the gate learns one "
                                       "score per expert and layer along this concept's own prompt (the paper's "
                                       "1e-4 is for a full router matrix and barely moves it)."),
                io.Float.Input("lr_token", **advanced_input(), default=1e-3, min=0.0, max=1.0, step=1e-4,
                               tooltip="Learning rate of the trigger token's embedding (reference: 1e-3)."),
                io.Float.Input("distill_lambda", **advanced_input(), default=BANK_VALUE, min=BANK_VALUE, max=10.0,
                               step=1e-6,
                               tooltip="Weight of routing distillation (soft mode), which keeps old concepts routed "
                                       "as before. -1: the bank's (set in R2MoE New Bank)."),
                io.Combo.Input("distill_mode", **advanced_input(), options=list(DISTILL_MODES), default="exact",
                               tooltip="exact: old concepts keep their gate scores exactly (the gate changes only "
                                       "along a direction that is zero on their prompts); soft: the reference "
                                       "penalty only; off: no distillation (for comparison)."),
                io.Float.Input("new_expert_margin", **advanced_input(), default=8.0, min=0.0, max=50.0, step=0.5,
                               optional=True,
                               tooltip="How far below the auxiliary expert the new expert scores on old concepts' "
                                       "prompts (exact mode) and on plain prompts without a trigger: its share "
                                       "there is at most e^-margin of the auxiliary expert's. 0 = it ties with the "
                                       "auxiliary expert (the reference's limit)."),
                io.Float.Input("prune_threshold", default=BANK_VALUE, min=BANK_VALUE, max=1.0, step=0.01,
                               tooltip="Drop the new expert in layers where it gives less than this share of the "
                                       "experts' output on the concept's prompts (old experts already serve it). "
                                       "-1: the bank's (set in R2MoE New Bank, 0.4 by default). The paper "
                                       "thresholds the gate weight instead."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Same seed, same result (fixed: queuing again does not re-train)."),
                io.Combo.Input("optimizer", **advanced_input(), options=list(OPTIMIZERS), default="AdamW",
                               tooltip="Optimizer."),
                io.Boolean.Input("replace_existing", default=False, optional=True,
                                 tooltip="Allow re-learning a concept name that is already in the bank."),
                io.Boolean.Input("gradient_checkpointing", **advanced_input(), default=True, optional=True,
                                 tooltip="Recompute activations in the backward pass: about half the peak VRAM, "
                                         "about 2x the time per step (both measured on an H200)."),
                io.Int.Input("preview_every", default=50, min=0, max=10000, optional=True,
                             tooltip="Every N steps, draw the concept's own prompt with what it has learned so far "
                                     "(half the training size, 12 steps, fixed seed) and show it beside the loss "
                                     "curve as the node's preview; one is always drawn at the end (the preview "
                                     "output). 0 = only that one."),
                io.Int.Input("augment_views", default=3, min=0, max=MAX_VIEWS, optional=True,
                             tooltip="Extra random views per photo, made once before training: rescaled small "
                                     "(caption starts 'a far away' / 'very small', the loss ignores the padding) "
                                     "or large (a crop, 'zoomed in' / 'close up'), maybe mirrored. "
                                     "0 = the photos as they are."),
                io.Int.Input("prior_images", default=0, min=0, max=MAX_PRIOR_IMAGES, optional=True,
                             tooltip="Class-prior preservation: this many images of 'photo of a {class}' drawn "
                                     "by the frozen model (euler, 25 steps, cfg 6) and mixed into every batch. "
                                     "Made once and cached per model, class and resolution, so the next concept "
                                     "of that class reuses them. Each step then costs about twice as much. "
                                     "0 = off (the gate already keeps plain class prompts off the new expert)."),
                io.Float.Input("prior_weight", default=1.0, min=0.0, max=10.0, step=0.05, optional=True,
                               tooltip="Loss weight of the class-prior images (Custom Diffusion: 1.0)."),
                io.Int.Input("checkpoint_every", default=100, min=0, max=100000, optional=True,
                             tooltip="Keep the run's state every N steps (in models/r2moe/resume, removed when it "
                                     "finishes): after Cancel or a crash, queuing the same graph again continues "
                                     "from there. A changed input starts afresh. 0 = no checkpoints."),
                # Last, so that workflows saved before it existed keep their widget values in place.
                io.Float.Input("token_warmup", **advanced_input(), default=TrainSettings.token_warmup, min=0.0,
                               max=0.9, step=0.05, optional=True,
                               tooltip="Share of the steps in which only the trigger token learns; the new expert "
                                       "and its gate join afterwards and learn what the token alone could not. "
                                       "0 = all learn from the first step."),
                io.Float.Input("timestep_bias", **advanced_input(), default=TrainSettings.timestep_bias, min=0.0,
                               max=4.0, step=0.25, optional=True,
                               tooltip="After the token warm-up, draw training noise levels with density "
                                       "(t/T)^bias: higher values train the high-noise steps, where the image's "
                                       "body and colour are decided, more often (1: three quarters of the steps "
                                       "in the noisier half). 0 = uniform, as the paper."),
            ],
            outputs=[
                Bank.Output(
                    display_name="bank",
                    tooltip="The bank with the new concept; save it with R2MoE Save Bank.",
                ),
                io.Image.Output(display_name="loss_curve", tooltip="The training loss over the steps."),
                io.String.Output(
                    display_name="report",
                    tooltip="What was learned, kept and pruned, and the bytes added.",
                ),
                io.Image.Output(display_name="preview", tooltip="The concept's own prompt drawn with what was "
                                "learned (small, fixed seed): the last of the previews shown while it trained."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, concept_name: str | None = None, trigger_token: str | None = None,
                        folder: str | None = None, distill_mode: str | None = None,
                        optimizer: str | None = None) -> bool | str:
        """Before the graph runs (no model loaded yet): a blank name, a token with a space or a folder without
        readable photos is refused in seconds, not after the training loop. Linked values arrive as None."""
        try:
            if concept_name is not None and not concept_name.strip():
                raise InvalidInputError("A concept needs a non-empty name.")
            if trigger_token is not None:
                check_trigger_token(trigger_token.strip())
            if folder is not None and folder.strip():
                concept_files(folder.strip())
            # The pinned host does not check posted combo values: an API client's typo is caught here.
            for name, value, options in (("distill_mode", distill_mode, DISTILL_MODES),
                                         ("optimizer", optimizer, OPTIMIZERS)):
                if value is not None and value not in options:
                    raise InvalidInputError(f"{name} must be one of {', '.join(options)}, got {str(value)[:200]!r}.")
        except InvalidInputError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, model, clip, vae, bank, images=None, **options) -> io.NodeOutput:
        with frames_released_on_failure():
            return cls._train(model, clip, vae, bank, images, options)

    @classmethod
    def _train(cls, model, clip, vae, bank, images, options: dict) -> io.NodeOutput:
        request = ConceptRequest.from_options(options)
        family = family_named(bank.family)
        request = request.at_resolution(family.resolution if family is not None else 512)
        bank.check_new_concept(request.name, request.token, request.replace_existing)
        check_bank_serves(bank, model, clip, new_concept=True)
        peak = check_training_memory(model, [clip, vae], bank.family, request.resolution,
                                     request.settings.batch_size, request.gradient_checkpointing)
        frames, given = _images(images, request.folder, request.resolution)
        captions = make_captions(len(frames), request.token, request.class_word, request.caption_template, given)
        views = augmented_views(frames, captions, request.augment_views, request.settings.seed)
        latents = model.model.process_latent_in(vae.encode(views.pixels)).float()
        masks = views.latent_masks(*latents.shape[-2:]) if request.augment_views else None
        prior = None
        if request.prior_images:
            prior_bar = comfy.utils.ProgressBar(request.prior_images)
            LOGGER.info("R2MoE training '%s': class-prior images of '%s'", request.name, request.class_word)
            prior = class_prior(
                model, clip, request.class_word, request.resolution, request.prior_images, request.prior_weight,
                lambda done, total: prior_bar.update_absolute(done, total),
            )
        steps = request.settings.steps
        bar = comfy.utils.ProgressBar(steps)
        previews = TrainingPreviews(model, vae, bar, steps)  # its clock starts here: the run's time so far
        size = latents.shape[-2:]
        look = PreviewSettings(request.preview_every,
                               make_captions(1, request.token, request.class_word, request.caption_template, None)[0],
                               (latents.shape[1], *(min(n, max(8, n // 2)) for n in size)), request.settings.seed)

        after_first_step: list[float] = []  # when step 1 ended: the steps after it are timed

        def on_step(step: int, loss: float, losses: list[float]) -> None:
            if step == 1:
                after_first_step.append(time.monotonic())
            elif after_first_step and step == min(TIMED_STEPS + 1, steps):
                per_step = (time.monotonic() - after_first_step[0]) / (step - 1)
                LOGGER.info("R2MoE training '%s': %.2f s per step, about %.0f s left for the %d steps", request.name,
                            per_step, per_step * (steps - step), steps)
            previews.losses = losses
            if not math.isfinite(loss):
                return
            if request.preview_every and (step % request.preview_every == 0 or step == steps):
                LOGGER.info("R2MoE training '%s': step %d/%d, loss %.4f", request.name, step, steps, loss)
            bar.update_absolute(step, steps)  # the picture comes with the preview drawn right after, when due

        existing = bank.concept_by_name(request.name)
        work_bank = bank.without_concept(request.name) if existing is not None else bank
        data = TrainingData(latents, views.captions, masks, prior, captions)
        resume = run_checkpoint(request, work_bank, data, views.pixels)
        outcome = train_concept(model, clip, work_bank, data, request, RunHooks(on_step, resume, (look, previews)))
        data = f"data: {len(frames)} photos + {len(views.captions) - len(frames)} rescaled/mirrored views" + (
            f"; {request.prior_images} class-prior images of '{prior.caption}' (weight {request.prior_weight:g})"
            if prior is not None else "; no class-prior images"
        )
        data += f"; estimated peak memory {peak / GIB:.1f} GiB"
        if resume.resumed_from:
            data += f"; resumed from step {resume.resumed_from} (the checkpoint of an interrupted run)"
        data += (f"\npreviews: {previews.count} of '{look.prompt}' ({look.shape[-1] * 8} px, {look.steps} steps), "
                 f"{previews.seconds:.1f} s = {100 * previews.seconds / max(outcome.seconds, 1e-9):.0f} % of the run"
                 + (f"; {previews.skipped} left out to stay within 10 %" if previews.skipped else ""))
        report = _report(outcome, request.name, request.token, steps, data)
        curve = torch.from_numpy(loss_curve(outcome.losses))[None]
        learned = outcome.bank.with_thumbnail(request.name, thumbnail_of(previews.output()))  # the bank's picture
        return io.NodeOutput(learned, curve, report, previews.output(), ui=ui.PreviewText(report))


def run_checkpoint(request: ConceptRequest, bank: Any, data: TrainingData, pixels: torch.Tensor) -> RunCheckpoint:
    """The run's resume checkpoint, keyed on everything its result depends on: the pack version, the request
    (less how often it previews and checkpoints), the bank's tensors and concepts, the photos' pixels, captions
    and masks, the class-prior images' settings. Latents enter by shape and rounded statistics only (a VAE's
    encoding may differ in the last bits between processes on a GPU, which must not stop a resume)."""
    settings = replace(request, preview_every=0, checkpoint_every=0)
    tensors, _ = bank_to_tensors(bank)
    prior = None if data.prior is None else (data.prior.caption, data.prior.weight, tuple(data.prior.latents.shape))
    latents = data.latents.float()
    statistics = tuple(f"{float(v):.3g}" for v in (latents.mean(), latents.std(), latents.abs().mean()))
    parts = [__version__, settings, bank.fingerprint.digest, [(c.name, c.token, c.task) for c in bank.concepts],
             *(tensors[name] for name in sorted(tensors)), pixels, tuple(latents.shape), statistics, data.captions,
             data.prompts, data.masks, prior]
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in request.name)[:80] or "concept"
    path = Path(resume_folder()) / f"{name}.pt"
    return RunCheckpoint(path, run_key(parts), request.checkpoint_every)


TRAIN_NODES: list[type[io.ComfyNode]] = [R2MoETrainConcept]
