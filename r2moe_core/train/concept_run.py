"""One concept's training run, host-free: gate inputs, the trainer, the loop, the token export and pruning.

A host (the ComfyUI adapter, the benchmark's world) supplies only what it alone can do, as a `TrainingHost`:
encode prompts with a trigger token's current vector, predict noise through its frozen model with the trainer's
deltas, its noise levels, and a cancel check. Everything else is written once here, so the node and the
benchmark cannot train a concept two different ways. Settings go down once: the caller's `TrainSettings` and
prune threshold reach the trainer and the pruner, and nothing comes back up but the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..bank.expert_bank import ConceptIdentity, ExpertBank
from ..moe.pruning import PruneReport, prune_task
from ..moe.routing import gate_input
from ..moe.routing_update import plain_prompts
from .preview import PreviewHook, PreviewSettings, preview_latent
from .resume import RunCheckpoint
from .step import Encode, PredictNoise, Trainable, TrainingData, training_step
from .trainer import ExpertTrainer, NamedDelta, TrainSettings, context_of

StepHook = Callable[[int, float, list[float]], None]  # (step, loss, the step losses so far)


class TrainingHost(Protocol):
    """What a host gives a concept's run."""

    sigmas: torch.Tensor  # the model's noise levels, one per training timestep (CPU, float)
    device: torch.device  # where the trainable state lives during the loop

    def encoder(self, token: str, vector: torch.Tensor) -> Encode:
        """Prompts -> text condition, with `token` read as `vector` (differentiable in it) and the bank's
        concepts' tokens as the bank stores them."""

    def noise_predictor(self, delta: NamedDelta) -> PredictNoise:
        """ε̂(x_t, σ, condition) through the frozen model with `delta(projection name, context)` added to the K/V
        of its text cross-attention layers."""

    def check_interrupted(self) -> None:
        """Raise if the user cancelled the run."""


@dataclass
class RunResult:
    """The next bank (pruned), the loss of every step, the pruning report, the run's wall time and how many bytes of
    expert weights the bank grew by."""

    bank: ExpertBank
    losses: list[float]
    prune: PruneReport
    seconds: float
    added_bytes: int


def prompt_gate_inputs(encode: Encode, prompts: Sequence[str]) -> torch.Tensor:
    """[N, D] gate inputs of the prompts, one row per photo (a caption several photos share weighs more), CPU."""
    return gate_input(context_of(encode(list(prompts)))).float().cpu()


def start_task(
    host: TrainingHost, bank: ExpertBank, concept: ConceptIdentity, token_start: torch.Tensor,
    prompts: Sequence[str], settings: TrainSettings,
) -> ExpertTrainer:
    """The trainer of the bank's next task: its gate inputs read with the token at its start value, and the
    prompts the new expert must stay out of (`plain_prompts`) read without the token."""
    with torch.no_grad():
        start = host.encoder(concept.token, token_start)
        concept_inputs = prompt_gate_inputs(start, prompts)
        plain = plain_prompts([concept.class_word, *(c.class_word for c in bank.concepts)], prompts, concept.token)
        neutral_inputs = gate_input(context_of(start(plain))).float().cpu()
    return ExpertTrainer(bank, token_start, settings, concept_inputs, neutral_inputs)


def finish_task(
    trainer: ExpertTrainer, encode: Encode, concept: ConceptIdentity, prompts: Sequence[str],
    prune_threshold: float | None = None,
) -> tuple[ExpertBank, PruneReport]:
    """Export the trained state as the next bank and prune the new expert where old ones serve the concept.
    `prune_threshold` None: the bank's own."""
    with torch.no_grad():
        gate_inputs = prompt_gate_inputs(encode, prompts)
    trainer.to("cpu")
    learned = trainer.export(concept.name, concept.token, concept.class_word, gate_inputs)
    threshold = learned.config.prune_threshold if prune_threshold is None else prune_threshold
    return prune_task(learned, learned.num_tasks, threshold, gate_inputs=gate_inputs)


@dataclass(frozen=True)
class RunHooks:
    """What a run reports and keeps besides its result: each step's loss (`on_step`), resume checkpoints (a
    matching one is continued, the state written every `resume.every` steps), and previews (the concept's prompt
    drawn with the current state when due, handed to the hook)."""

    on_step: StepHook | None = None
    resume: RunCheckpoint | None = None
    preview: tuple[PreviewSettings, PreviewHook] | None = None


def fit(
    trainer: Trainable, host: TrainingHost, encode: Encode, data: TrainingData, hooks: RunHooks | None = None,
    steps: int | None = None, seed: int | None = None,
) -> list[float]:
    """The optimisation loop over any trainable (R2MoE's trainer, a benchmark baseline): `steps` steps (default
    the settings') drawing batches and noise from `seed` (default the settings'); returns each step's ε-MSE."""
    hooks = hooks or RunHooks()
    on_step, resume, preview = hooks.on_step, hooks.resume, hooks.preview
    steps = trainer.settings.steps if steps is None else steps
    predict_noise = host.noise_predictor(trainer.named_delta)
    trainer.to(host.device)
    optimizer = trainer.optimizer()
    generator = torch.Generator().manual_seed(trainer.settings.seed if seed is None else seed)
    data = data.to(host.device)
    losses: list[float] = resume.load(trainer, optimizer, generator) if resume is not None else []
    for step in range(len(losses), steps):
        host.check_interrupted()
        result = training_step(trainer, optimizer, predict_noise, encode, data, host.sigmas, generator)
        losses.append(result.mse)
        if on_step is not None:
            on_step(step + 1, result.loss, losses)
        if preview is not None and preview[0].due(step + 1, steps):
            preview[1](step + 1, lambda: preview_latent(predict_noise, encode, host.sigmas, preview[0], host.device))
        if resume is not None and resume.due(step + 1, steps):
            resume.save(step + 1, trainer, optimizer, generator, losses)
    return losses


def run_concept(
    host: TrainingHost, bank: ExpertBank, concept: ConceptIdentity, token_start: torch.Tensor, data: TrainingData,
    settings: TrainSettings, prune_threshold: float | None = None, hooks: RunHooks | None = None,
) -> RunResult:
    """Learn one concept into the next bank; `bank` is left as it was whatever happens.

    `data.prompts` are the photos' own captions (without rescale words): the concept's gate input comes from them.
    With `hooks.resume`, the run continues a matching checkpoint, writes its own, and removes it once the bank is
    made.
    """
    started = time.perf_counter()
    trainer = start_task(host, bank, concept, token_start, data.prompts, settings)
    encode = host.encoder(concept.token, trainer.token)
    losses = fit(trainer, host, encode, data, hooks)
    pruned, report = finish_task(trainer, encode, concept, data.prompts, prune_threshold)
    if hooks is not None and hooks.resume is not None:
        hooks.resume.remove()
    return RunResult(pruned, losses, report, time.perf_counter() - started,
                     pruned.expert_bytes() - bank.expert_bytes())


__all__ = ["ConceptIdentity", "RunHooks", "RunResult", "StepHook", "TrainingHost", "finish_task", "fit",
           "prompt_gate_inputs", "run_concept", "start_task"]
