"""Running the core training loop on a ComfyUI MODEL/CLIP/VAE.

Traps handled here: the executor runs every node under torch.inference_mode() and builds models there, so their
weights are inference tensors that autograd cannot save; we train under inference_mode(False) on clones whose
comfy.ops layers read their weights through a clone (a weight wrapper, as TrainLoraNode does), so the shared
model is never modified. The stock samplers are no_grad, so the UNet is called directly through apply_model
with the patch's wrappers merged into transformer_options, exactly as sampling would.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import comfy.model_management
import comfy.patcher_extension
import torch

from ...r2moe_core.bank.expert_bank import ExpertBank
from ...r2moe_core.errors import InvalidInputError
from ...r2moe_core.log import LOGGER
from ...r2moe_core.train.concept_run import ConceptIdentity, RunHooks, RunResult, run_concept
from ...r2moe_core.train.request import ConceptRequest
from ...r2moe_core.train.step import TrainingData, append_dims
from ...r2moe_core.train.trainer import NamedDelta, TextCondition, TrainingRuntime
from .bank_patch import install_runtime
from .clip_tokens import ConceptTokenizer

if TYPE_CHECKING:  # ComfyUI's own classes, for the annotations only
    from comfy.model_base import BaseModel
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import CLIP


def _clone_tensor(weight: torch.Tensor) -> torch.Tensor:
    return weight.clone()


@contextlib.contextmanager
def gradient_checkpointing(unet: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Recompute ResBlocks and SpatialTransformers in the backward pass instead of keeping their activations.

    Each call gets its own shallow copy of transformer_options: the UNet mutates that dict as it goes (block,
    block_index), and a recomputation reading the mutated one would run another layer's patch.
    The forwards are instance attributes on the shared modules only for the duration of training.
    """
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    patched = []
    if enabled:
        for module in unet.modules():
            if isinstance(module, (ResBlock, SpatialTransformer)) and "forward" not in vars(module):
                original = module.forward

                def run(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                    args = tuple(dict(a) if isinstance(a, dict) else a for a in args)
                    kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
                    return torch.utils.checkpoint.checkpoint(_original, *args, use_reentrant=False, **kwargs)

                module.forward = run
                patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


@contextlib.contextmanager
def frames_released_on_failure() -> Iterator[None]:
    """Free the locals of the frames a failure or Cancel passes through, as it passes.

    The traceback would keep a run's training clones of the MODEL alive until a garbage collection frees them all
    at once; ComfyUI tracks a loaded clone by weak reference to it and to its parent, and when both die in the
    same collection it loses the parent, keeps the entry, warns "memory leak with model BaseModel" and runs a
    full collection on every later model load. Freed here, the clones go one by one, child first, as on success.
    """
    try:
        yield
    except BaseException as failure:
        seen: set[int] = set()
        error: BaseException | None = failure
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            traceback.clear_frames(error.__traceback__)
            error = error.__cause__ or error.__context__
        raise


def _math_attention() -> contextlib.AbstractContextManager:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def static_patcher(patcher: ModelPatcher) -> Any:
    """The patcher itself, or on hosts with dynamic VRAM (ComfyUI >= 0.38 on NVIDIA: `ModelPatcherDynamic`, which
    streams weights and wraps only modules over 16 KB) its non-dynamic delegate: training needs every weight
    resident and every comfy.ops layer wrappable. Feature-detected, so older hosts take the patcher as it is."""
    is_dynamic = getattr(patcher, "is_dynamic", None)
    if not (callable(is_dynamic) and is_dynamic()):
        return patcher
    try:
        return patcher.get_non_dynamic_delegate()
    except (AttributeError, RuntimeError) as err:
        raise InvalidInputError(
            f"This ComfyUI loads the model with dynamic VRAM and could not give a static copy for training ({err}). "
            "Start ComfyUI with --disable-dynamic-vram (or load the checkpoint again) and queue once more."
        ) from err


def trainable_view(patcher: ModelPatcher) -> Any:
    """A clone of a ModelPatcher (its static delegate on dynamic-VRAM hosts) whose comfy.ops layers use
    non-inference copies of their weights."""
    view = static_patcher(patcher).clone()
    for name, module in view.model.named_modules():
        if not hasattr(module, "weight_function"):
            continue
        for attr in ("weight", "bias"):
            if getattr(module, attr, None) is not None:
                view.add_weight_wrapper(f"{name}.{attr}" if name else attr, _clone_tensor)
    return view


def _input_embeddings(clip: CLIP, key: str) -> torch.Tensor | None:
    """The input token-embedding table of one of the CLIP's text encoders (clip_l, clip_g, clip_h)."""
    encoder = getattr(clip.cond_stage_model, key, None)
    transformer = getattr(encoder, "transformer", None)
    table = getattr(transformer, "get_input_embeddings", None)
    return table().weight if callable(table) else None


def class_word_embedding(clip: CLIP, word: str, encoders: Sequence[tuple[str, int]]) -> torch.Tensor:
    """Initial token embedding [1, D]: per text encoder, the mean input embedding of the class word's sub-tokens,
    side by side in the bank's encoder order (SDXL: CLIP-L's then OpenCLIP-bigG's)."""
    tokenizers = {
        str(getattr(value, "embedding_key", "")): value
        for value in vars(getattr(clip.tokenizer, "base", clip.tokenizer)).values()
        if getattr(value, "tokenizer", None) is not None and hasattr(value, "embedding_size")
    }
    parts = []
    for key, width in encoders:
        tokenizer = tokenizers.get(key) or (next(iter(tokenizers.values()), None) if len(encoders) == 1 else None)
        table = _input_embeddings(clip, key or getattr(tokenizer, "embedding_key", "clip_l"))
        if tokenizer is None or table is None or table.shape[1] != width:
            raise InvalidInputError(
                f"This CLIP has no {key or 'text'} encoder with {width}-wide token embeddings; connect the CLIP of "
                "the checkpoint the bank was made for."
            )
        hf_tokenizer = tokenizer.tokenizer
        ids = hf_tokenizer(word or "object")["input_ids"][1:-1] or hf_tokenizer("object")["input_ids"][1:-1]
        with torch.inference_mode(False):
            parts.append(table[ids].detach().float().mean(0, keepdim=True).cpu().clone())
    return torch.cat(parts, dim=1)


def pooled_conditioning(
    base_model: BaseModel, condition: TextCondition, latent_shape: Sequence[int]
) -> torch.Tensor | None:
    """The UNet's extra vector input (SDXL: pooled text embedding + size/crop embeddings, `y`), made by the model's
    own `encode_adm` as sampling makes it for an uncropped image of the latent's size; None for UNets without."""
    if not getattr(base_model, "adm_channels", 0) or condition.pooled is None:
        return None
    height, width = 8 * int(latent_shape[-2]), 8 * int(latent_shape[-1])
    return base_model.encode_adm(
        pooled_output=condition.pooled, width=width, height=height, crop_w=0, crop_h=0,
        target_width=width, target_height=height,
    )


def noise_predictor(
    patcher: ModelPatcher,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | TextCondition], torch.Tensor]:
    """ε̂(x_t, σ, condition) through a loaded ModelPatcher with its patches and wrappers, as sampling would run it.

    The model's own apply_model turns its output (ε, v or x0, by its model sampling) into the denoised image D,
    and ε̂ = (x_t − D)/σ, so ε-, v-prediction and SDXL models all train against the same ε target."""
    with torch.inference_mode(False):  # weights cast or moved while loading must not become inference tensors
        comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    device, base_model = patcher.load_device, patcher.model
    options = dict(patcher.model_options.get("transformer_options", {}))
    options["wrappers"] = comfy.patcher_extension.merge_nested_dicts(options.get("wrappers", {}), patcher.wrappers)

    def predict_noise(x_t: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor | TextCondition) -> torch.Tensor:
        dtype = base_model.get_dtype()
        x_t, sigma = x_t.to(device), sigma.to(device)
        condition = condition if isinstance(condition, TextCondition) else TextCondition(condition)
        extra = {}
        y = pooled_conditioning(base_model, condition, x_t.shape)
        if y is not None:
            extra["y"] = y.to(device, dtype)
        denoised = base_model.apply_model(
            x_t.to(dtype), sigma, c_crossattn=condition.context.to(device, dtype), transformer_options=dict(options),
            **extra,
        )
        return (x_t - denoised.float()) / append_dims(sigma, x_t.ndim)

    return predict_noise


class ComfyTrainingHost:
    """`TrainingHost` on a ComfyUI MODEL and CLIP: trainable views of both (the shared ones are never touched),
    the trigger token spliced into the tokenizer, noise predicted through the model's own apply_model."""

    def __init__(self, model: ModelPatcher, clip: CLIP, bank: ExpertBank) -> None:
        self.model, self.bank = model, bank
        self.text = clip.clone()
        self.text.patcher = trainable_view(clip.patcher)
        # On a dynamic-VRAM host the view is a static delegate holding its own copy of the encoder: run that copy
        # (the one the weight wrappers sit on and that loading puts on the device), not the clone's original.
        self.text.cond_stage_model = self.text.patcher.model
        self.base_tokenizer = getattr(clip.tokenizer, "base", clip.tokenizer)
        self.device = model.load_device
        self.sigmas = model.model.model_sampling.sigmas.detach().float().cpu().clone()

    def encoder(self, token: str, vector: torch.Tensor) -> Callable[[Sequence[str]], TextCondition]:
        text, device = self.text, self.device
        text.tokenizer = ConceptTokenizer(self.base_tokenizer, {token: vector}, self.bank.token_encoders)

        def encode(texts: Sequence[str]) -> TextCondition:
            # ComfyUI's CLIP adds residuals in place (`x += ...`), which autograd rejects when x was saved for
            # backward; saving copies instead makes the text encoder differentiable without touching its code.
            # The CLIP causal mask (77x77) is not aligned the way CUDA's fused SDPA backward needs: use the math
            # kernel for these 77-token sequences (cheap), and keep the fused kernels for the UNet.
            with torch.autograd.graph.saved_tensors_hooks(_clone_tensor, _identity), _math_attention():
                encoded = {  # once each
                    t: text.encode_from_tokens(text.tokenize(t), return_pooled=True) for t in dict.fromkeys(texts)
                }
                context = torch.cat([encoded[t][0] for t in texts]).to(device)
                pooled = [encoded[t][1] for t in texts]
                if any(p is None for p in pooled):
                    return TextCondition(context)
                return TextCondition(context, torch.cat(pooled).to(device))

        return encode

    def noise_predictor(self, delta: NamedDelta) -> Callable[..., torch.Tensor]:
        unet = install_runtime(trainable_view(self.model), TrainingRuntime(delta), self.bank.layers)
        self.device = unet.load_device
        return noise_predictor(unet)

    def check_interrupted(self) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()


def train_concept(
    model: ModelPatcher, clip: CLIP, bank: ExpertBank, data: TrainingData, request: ConceptRequest,
    hooks: RunHooks | None = None,
) -> RunResult:
    """Learn one concept through the core run; the input bank, model and CLIP are left untouched whatever happens.
    Parameters and the tensors autograd saves are made outside the executor's inference mode, and the UNet's
    blocks recompute their activations in the backward pass when the request asks for it."""
    concept = ConceptIdentity(request.name, request.token, request.class_word)
    host = ComfyTrainingHost(model, clip, bank)
    token_start = class_word_embedding(clip, request.class_word, bank.token_encoders)
    checkpointing = gradient_checkpointing(model.model.diffusion_model, request.gradient_checkpointing)
    with torch.inference_mode(False), torch.enable_grad(), checkpointing:
        result = run_concept(host, bank, concept, token_start, data, request.settings, request.prune_threshold,
                             hooks)
    LOGGER.info("R2MoE: learned '%s' (%s) in %.1f s; %s", request.name, request.token, result.seconds,
                result.prune.summary())
    return result
