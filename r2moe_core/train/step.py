"""One optimisation step of a concept's training, shared by every trainable (R2MoE's trainer, the benchmark's
baselines): a random batch, random timesteps, x_t = x0 + σ·ε, loss = MSE(ε̂, ε) + λ·regulariser."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from ..errors import InvalidInputError
from ..moe.routing import gate_input
from .class_prior import PriorData
from .trainer import TextCondition, context_of

Encode = Callable[[Sequence[str]], "torch.Tensor | TextCondition"]
PredictNoise = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | TextCondition"], torch.Tensor]


class BatchSettings(Protocol):
    batch_size: int
    steps: int
    seed: int


class Trainable(Protocol):
    """What `training_step` needs from the state being trained."""

    settings: BatchSettings
    distill_lambda: float
    prior_rows: int  # trailing batch rows that are class-prior images, set by `training_step` around each step

    def named_delta(self, name: str, context: torch.Tensor) -> torch.Tensor | None:
        """ΔK or ΔV of the projection `name` for a context [B, N, D], differentiable in the trainable state."""

    def observe_gate_inputs(self, m: torch.Tensor) -> None:
        """See the batch's gate inputs [B, D] (R2MoE follows its concept's prompt; others ignore them)."""

    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over the trainable state."""

    def to(self, device: torch.device | str) -> Trainable:
        """Move the trainable state to the training device."""

    def distill_loss(self) -> torch.Tensor:
        """The regulariser added with weight `distill_lambda`."""

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def timestep_bias(self) -> float:
        """The exponent of the next step's timestep draw (`draw_timesteps`; 0: uniform)."""


@dataclass(frozen=True)
class TrainingData:
    """What a concept trains on, prepared once: latents [N, ...] with one caption each, optional loss masks
    [N, 1, h, w] (rescaled views), class-prior rows, and the photos' own captions (`prompts`, without rescale
    words), from which the concept's gate input is read."""

    latents: torch.Tensor
    captions: Sequence[str]
    masks: torch.Tensor | None = None
    prior: PriorData | None = None
    prompts: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.latents.shape[0] != len(self.captions) or self.latents.shape[0] == 0:
            raise InvalidInputError(f"{self.latents.shape[0]} training latents but {len(self.captions)} captions.")
        if not self.prompts:
            object.__setattr__(self, "prompts", list(self.captions))

    def to(self, device: torch.device | str) -> TrainingData:
        """A float32 copy on the training device (the caller's tensors stay where they are)."""
        prior = self.prior
        if prior is not None:
            prior = replace(prior, latents=prior.latents.to(device, torch.float32))
        masks = None if self.masks is None else self.masks.to(device, torch.float32)
        return replace(self, latents=self.latents.detach().clone().to(device, torch.float32), masks=masks, prior=prior)


@dataclass(frozen=True)
class StepResult:
    """The step's total loss, its ε-MSE on the concept's rows, the regulariser and the class-prior MSE."""

    loss: float
    mse: float
    distill: float
    prior: float = 0.0


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the pixels a mask [B, 1, h, w] covers (weights in [0, 1]); plain MSE without one."""
    error = (prediction.float() - target.float()) ** 2
    if mask is None:
        return error.mean()
    weights = mask.to(error.device, error.dtype).expand_as(error)
    return (error * weights).sum() / weights.sum().clamp_min(1e-8)


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """x [B] viewed as [B, 1, ..., 1] with `ndim` dimensions, to scale a batch of images."""
    return x.view(-1, *([1] * (ndim - 1)))


def draw_timesteps(count: int, batch: int, bias: float, generator: torch.Generator) -> torch.Tensor:
    """`batch` training timesteps in [0, count) with density ∝ (t / count)^bias.

    0 is the reference's uniform draw. A positive bias moves steps towards high noise, where sampling decides a
    concept's body and colour (1: a linear ramp, half the steps above t = 0.71·count; 2: above 0.79·count)."""
    if bias == 0:
        return torch.randint(0, count, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator)
    return (u ** (1.0 / (1.0 + bias)) * count).long().clamp_max(count - 1)


def training_step(
    trainer: Trainable,
    optimizer: torch.optim.Optimizer,
    predict_noise: PredictNoise,
    encode: Encode,
    data: TrainingData,
    sigmas: torch.Tensor,
    generator: torch.Generator,
) -> StepResult:
    """One optimizer step on a random batch of `data`.

    `predict_noise(x_t, sigma, condition)` is the frozen denoiser with the trainable deltas applied; `encode`
    the text encoder with the trainable token in place (a context tensor, or a TextCondition when the UNet also
    reads a pooled embedding). Masks limit each latent's loss to its photo; class-prior rows are added to the
    batch with loss weight `prior.weight` (Custom Diffusion's prior preservation).
    """
    latents, prior = data.latents, data.prior
    n = latents.shape[0]
    batch = trainer.settings.batch_size
    rows = torch.randint(0, n, (batch,), generator=generator)
    bias = trainer.timestep_bias()
    steps = draw_timesteps(sigmas.shape[0], batch, bias, generator)
    noise = torch.randn((batch, *latents.shape[1:]), generator=generator)
    device = latents.device
    x0 = latents[rows.to(device)]
    texts = [data.captions[int(r)] for r in rows]
    mask = None if data.masks is None else data.masks[rows.to(data.masks.device)]
    extra = 0
    if prior is not None:
        extra = batch
        picks = torch.randint(0, prior.latents.shape[0], (batch,), generator=generator)
        steps = torch.cat([steps, draw_timesteps(sigmas.shape[0], batch, bias, generator)])
        noise = torch.cat([noise, torch.randn((batch, *latents.shape[1:]), generator=generator)])
        x0 = torch.cat([x0, prior.latents[picks].to(device, x0.dtype)])
        texts += [prior.caption] * batch
    sigma = sigmas[steps].to(device, x0.dtype)
    noise = noise.to(device, x0.dtype)
    x_t = x0 + noise * append_dims(sigma, x0.ndim)
    context = encode(texts)
    trainer.observe_gate_inputs(gate_input(context_of(context)[:batch]))
    trainer.prior_rows = extra
    try:  # the rows stay marked through backward: gradient checkpointing re-runs the forward there
        predicted = predict_noise(x_t, sigma, context).float()
        mse = masked_mse(predicted[:batch], noise[:batch], mask)
        prior_mse = masked_mse(predicted[batch:], noise[batch:], None) if extra else mse.new_zeros(())
        distill = trainer.distill_loss()
        loss = mse + trainer.distill_lambda * distill + (prior.weight * prior_mse if extra else 0.0)
        if not torch.isfinite(loss):
            raise InvalidInputError(
                f"Training diverged (loss {loss.item()}); lower the learning rates or check the images and model."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    finally:
        trainer.prior_rows = 0
    trainer.after_step()
    return StepResult(float(loss.detach()), float(mse.detach()), float(distill.detach()), float(prior_mse.detach()))
