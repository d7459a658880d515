"""Learning concepts in the toy world through the real core training loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from world.sampler import ddpm_sigmas

import r2moe_core as core
from r2moe_core.moe.delta_cache import BankRuntime
from r2moe_core.moe.routing_update import plain_prompts
from r2moe_core.train.class_prior import PriorData
from r2moe_core.train.step import TrainingData, training_step
from r2moe_core.train.trainer import ExpertTrainer, TrainSettings

from .small import small_layers
from .toy import ToyDenoiser, ToyTextEncoder

SIGMAS = ddpm_sigmas()[:300]  # the toy world lives at low noise levels


@dataclass
class ToyWorld:
    denoiser: ToyDenoiser
    encoder: ToyTextEncoder
    bank: object

    @classmethod
    def make(cls, top_k: int = 3) -> ToyWorld:
        layers = small_layers()
        denoiser, encoder = ToyDenoiser(layers), ToyTextEncoder()
        fingerprint = core.compute_fingerprint(layers, denoiser.weights())
        bank = core.ExpertBank.empty(core.BankConfig(rank=2, top_k=top_k), layers, fingerprint, token_dim=16)
        return cls(denoiser, encoder, bank)


def concept_latents(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, 4, 4, generator=gen) * 1.5 + 0.05 * torch.randn(4, 4, 4, 4, generator=gen)


def learn(
    world: ToyWorld, bank, name: str, seed: int, steps: int = 300, class_word: str | None = None,
    photos_seed: int | None = None, prior: PriorData | None = None, scenes: tuple[str, ...] = (), **settings,
) -> tuple[object, list[float]]:
    """Train concept `<name1> {class_word}` (class word: the name by default) on the latents of `photos_seed`
    (default `seed`), with class-prior rows when `prior` is given; captions end in `on {scene}` when scenes are
    given. Returns the exported (unpruned) bank and the losses."""
    token = f"<{name}1>"
    class_word = class_word or name
    defaults = {"lr_experts": 3e-2, "lr_router": 3e-2, "lr_token": 1e-2, "seed": seed}
    captions = [f"photo of {token} {class_word}" + (f" on {scenes[i % len(scenes)]}" if scenes else "")
                for i in range(4)]
    start = world.encoder.word(class_word)[None]
    concept_in = core.gate_input(world.encoder(list(dict.fromkeys(captions)), {token: start}))
    classes = sorted({c.class_word for c in bank.concepts} | {class_word})
    plain = plain_prompts(classes, captions, token)
    neutral_in = core.gate_input(world.encoder([p.replace("photo of a ", "photo of ") for p in plain], {}))
    trainer = ExpertTrainer(
        bank, start, TrainSettings(steps=steps, **(defaults | settings)), concept_in, neutral_in
    )
    optimizer = trainer.optimizer()
    gen = torch.Generator().manual_seed(seed)

    def predict(x, sigma, context):
        return world.denoiser(x, sigma, context, lambda proj, ctx: trainer.delta(trainer.index[proj], ctx))

    def encode(texts):
        return world.encoder(list(texts), {token: trainer.token})

    latents = concept_latents(seed if photos_seed is None else photos_seed)
    data = TrainingData(latents, captions, prior=prior)
    losses = [
        training_step(trainer, optimizer, predict, encode, data, SIGMAS, gen).mse
        for _ in range(steps)
    ]
    gate_in = core.gate_input(encode(list(dict.fromkeys(captions)))).detach()
    return trainer.export(name, token, class_word, gate_in), losses


def prediction(world: ToyWorld, bank, prompt: str) -> torch.Tensor:
    """ε̂ at fixed noise and σ through the inference runtime (what sampling would see)."""
    runtime = BankRuntime(bank, 1.0)
    context = world.encoder([prompt], {c.token: c.embedding for c in bank.concepts})
    entry = runtime.entry_for(context, None)
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(1, 4, 4, 4, generator=gen) * 3

    def delta(proj, ctx):
        d = runtime.delta(entry, proj)
        return 0 if d is None else d

    return world.denoiser(x, torch.tensor([3.0]), context, delta)


def eval_loss(world: ToyWorld, bank, name: str, seed: int, class_word: str | None = None) -> float:
    """Denoising error on the latents of `seed` for prompt `photo of <name1> {class_word}`, fixed noise/steps."""
    runtime = BankRuntime(bank, 1.0)
    prompt = f"photo of <{name}1> {class_word or name}"
    context = world.encoder([prompt] * 4, {c.token: c.embedding for c in bank.concepts})
    entry = runtime.entry_for(context, None)
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(4, 4, 4, 4, generator=gen)
    sigma = SIGMAS[torch.randint(0, len(SIGMAS), (4,), generator=gen)]
    x = concept_latents(seed) + noise * sigma.view(-1, 1, 1, 1)

    def delta(proj, ctx):
        d = runtime.delta(entry, proj)
        return 0 if d is None else d

    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(world.denoiser(x, sigma, context, delta), noise))
