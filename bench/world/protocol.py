"""The lifelong protocol (the paper's, on the world model): learn concepts one after another in a seeded order;
after every task, draw every concept learned so far with fixed seeds and prompts and score it.

Image alignment (IA) is the mean cosine between a concept's generated and reference images under a feature
extractor, in points (x100), against references the method never trained on (world concepts rendered anew at
other places, sizes and backgrounds; a held-out photo of each photo concept); IA against the training photos is
kept beside it, so memorisation shows as the gap. Forgetting is, per concept, its IA right after its own task
minus its IA after the last task, averaged over every concept but the last. Text alignment (TA) asks the world
evaluator whether the in-context images show the asked background and position, and whether the concept itself
is recognised (its references are the nearest of all learned concepts'). Class drift compares the images of
class prompts after the last task with the base model's; `class_drift` uses the gate's own protected prompts
(`photo of a {class}`), `class_drift_unseen` other wordings, places, backgrounds and counts of the learned
classes, `class_drift_other` classes no concept belongs to.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from r2moe_core.moe.routing import gate_input
from r2moe_core.train.class_prior import PriorData, prior_prompt
from r2moe_core.train.concept_run import RunHooks, fit
from r2moe_core.train.step import TrainingData

from .concepts import CLASS_WORDS, ConceptSpec, concept_images
from .methods import Budget, Method, TaskStart, make_method
from .sampler import LATENT_SCALE, ddpm_sigmas, sample
from .scenes import place
from .text import TextEncoder
from .unet import UNet
from .vae import WorldVAE
from .vocab import BACKGROUNDS, POSITIONS, SIZE

LOG = logging.getLogger("r2moe.bench.lifelong")
SIGMAS = ddpm_sigmas()

Features = Callable[[list[np.ndarray]], torch.Tensor]  # images -> unit-norm features [N, F]
HELDOUT_SEED = 1  # world concepts' training photos are drawn with seed 0, their held-out references with this
HELDOUT_IMAGES = 6


@dataclass(frozen=True)
class ConceptData:
    """One task: a trigger token, its class word, training images (uint8 HxWx3) and their captions, and images of
    the concept that are never trained on (`heldout`, the IA references)."""

    token: str
    class_word: str
    images: list[np.ndarray]
    captions: list[str]
    heldout: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def from_spec(cls, spec: ConceptSpec, count: int, heldout: int = HELDOUT_IMAGES) -> ConceptData:
        """A generator-defined world concept with `count` training scenes and `heldout` new ones."""
        pairs = concept_images(spec, count)
        others = [p[0] for p in concept_images(spec, heldout, seed=HELDOUT_SEED)] if heldout else []
        return cls(spec.token, spec.class_word, [p[0] for p in pairs], [p[1] for p in pairs], others)


@dataclass(frozen=True)
class References:
    """Per concept token, unit-norm features of its held-out images (IA) and of its training photos."""

    heldout: dict[str, torch.Tensor]
    train: dict[str, torch.Tensor]

    @classmethod
    def of(cls, concepts: Sequence[ConceptData], features: Features) -> References:
        train = {c.token: features(c.images) for c in concepts}
        return cls({c.token: features(c.heldout) if c.heldout else train[c.token] for c in concepts}, train)


@dataclass(frozen=True)
class EvalSettings:
    images_per_concept: int = 3
    steps: int = 12
    cfg: float = 5.0
    contexts: int = 4  # in-context prompts per concept after the last task (world track only)


@dataclass
class World:
    unet: UNet
    text: TextEncoder
    vae: WorldVAE

    def __post_init__(self) -> None:
        for part in (self.unet, self.text, self.vae):
            part.requires_grad_(False).eval()
        with torch.no_grad():
            self.empty = self.text([""])

    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            return self.vae.encode(x) * LATENT_SCALE

    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            images = self.vae.decode(latents / LATENT_SCALE)
        return list((images.permute(0, 2, 3, 1) * 255).round().byte().numpy())


@dataclass
class MethodRun:
    """Everything measured for one method in one seeded run."""

    name: str
    order: list[str]
    ia: list[dict[str, float]] = field(default_factory=list)  # after task t: concept -> IA (points)
    train_s: list[float] = field(default_factory=list)
    params: list[int] = field(default_factory=list)  # cumulative, after each task
    bytes: list[int] = field(default_factory=list)
    sample_s_per_image: float = 0.0
    text_alignment: float = 0.0
    ta_parts: dict[str, float] = field(default_factory=dict)
    final_images: dict[str, list[np.ndarray]] = field(default_factory=dict)
    losses: list[list[float]] = field(default_factory=list)
    class_drift: float = 0.0
    class_drift_unseen: float = 0.0
    class_drift_other: float = 0.0
    ia_train: dict[str, float] = field(default_factory=dict)  # after the last task: concept -> IA vs its photos
    kept_share: float | None = None  # R2MoE variants: expert parameters kept after pruning (0-1)
    gate_matrix: list[list[float]] | None = None  # R2MoE: concept prompt (rows) x expert (aux, 1..T), mean weight

    @property
    def image_alignment(self) -> float:
        return float(np.mean(list(self.ia[-1].values())))

    @property
    def forgetting(self) -> float:
        own = {c: self.ia[i][c] for i, c in enumerate(self.order)}
        drops = [own[c] - self.ia[-1][c] for c in self.order[:-1]]
        return float(np.mean(drops)) if drops else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "image_alignment": round(self.image_alignment, 2),
            "image_alignment_heldout": round(self.image_alignment, 2),
            "image_alignment_train": round(float(np.mean(list(self.ia_train.values()))), 2),
            "text_alignment": round(self.text_alignment, 2),
            "forgetting": round(self.forgetting, 2),
            "params_added": self.params[-1],
            "bytes_added": self.bytes[-1],
            "train_s_per_task": round(float(np.mean(self.train_s)), 2),
            "sample_s_per_image": round(self.sample_s_per_image, 4),
            "class_drift": round(self.class_drift, 2),
            "class_drift_unseen": round(self.class_drift_unseen, 2),
            "class_drift_other": round(self.class_drift_other, 2),
        } | ({} if self.kept_share is None else {"expert_kept_share": round(self.kept_share, 4)})


def noise_predictor(unet: UNet, delta: Callable) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """x_t = x0 + σε -> ε̂, the ε-prediction convention of `training_step`, on the world UNet."""
    def predict(x_t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        t = torch.searchsorted(SIGMAS, sigma.float().contiguous()).clamp_max(len(SIGMAS) - 1).float()
        x_in = x_t / (sigma.view(-1, 1, 1, 1) ** 2 + 1).sqrt()
        return unet(x_in, t, context, delta)
    return predict


StepHook = Callable[[int, Callable[[str, torch.Tensor], torch.Tensor | None], Callable[[Sequence[str]], torch.Tensor]],
                    None]


@dataclass
class WorldHost:
    """The world as a core `TrainingHost`: its text encoder with the method's learned tokens, its UNet."""

    world: World
    tokens: dict[str, torch.Tensor]
    sigmas: torch.Tensor = SIGMAS
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def encoder(self, token: str, vector: torch.Tensor) -> Callable[[Sequence[str]], torch.Tensor]:
        return lambda texts: self.world.text(list(texts), self.tokens | {token: vector})

    def noise_predictor(self, delta: Callable[[str, torch.Tensor], torch.Tensor | None]
                        ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        return noise_predictor(self.world.unet, delta)

    def check_interrupted(self) -> None:
        """A benchmark run is not cancelled from outside."""


def train_task(world: World, method: Method, concept: ConceptData, steps: int, seed: int,
               on_step: StepHook | None = None) -> tuple[float, list[float]]:
    """One task through the core's loop (`r2moe_core.train.concept_run.fit`; R2MoE also set up and exported by
    `concept_run`, as the node does); returns (seconds, losses).

    `on_step(step, delta, encode)` runs before the first step and after each one (the budget check reads a
    held-out loss there); it must not change the training state.
    """
    table = world.text.text_model.embeddings.token_embedding.weight
    class_ids = world.text.tokenizer(concept.class_word, add_special_tokens=False)["input_ids"]
    token_init = table[class_ids].mean(0, keepdim=True)
    started = time.perf_counter()
    start = TaskStart(WorldHost(world, dict(method.tokens)), list(concept.captions))
    task = method.begin(concept.token, concept.class_word, token_init, start)
    latents = world.encode_images(concept.images)
    encode = start.host.encoder(concept.token, task.token)
    prior = class_prior(world, concept.class_word, method.prior_images, method.budget.prior_weight)
    data = TrainingData(latents, concept.captions, prior=prior)
    hook = None
    if on_step is not None:
        on_step(0, task.delta, encode)

        def hook(step: int, loss: float, losses: list[float]) -> None:
            on_step(step, task.delta, encode)

    losses = fit(task, start.host, encode, data, RunHooks(on_step=hook), steps=steps, seed=seed)
    method.end(task, concept.token, concept.class_word, start)
    return time.perf_counter() - started, losses


_PRIORS: dict[tuple[int, str, int], torch.Tensor] = {}


def class_prior(world: World, class_word: str, count: int, weight: float) -> PriorData | None:
    """`count` images of `photo of a {class}` from the frozen world model (cached per world, class and count)."""
    if count <= 0:
        return None
    key = (id(world), class_word, count)
    if key not in _PRIORS:
        settings = EvalSettings()
        with torch.no_grad():
            context = world.text([prior_prompt(class_word)] * count)
            with world.unet.fixed_contexts():
                _PRIORS[key] = sample(lambda x, t, c: world.unet(x, t, c, None), context, world.empty,
                                      steps=settings.steps, cfg=settings.cfg, seed=10_000)
    return PriorData(_PRIORS[key], prior_prompt(class_word), weight)


def alone_prompts(concept: ConceptData, count: int, token: bool = True) -> list[str]:
    """`count` prompts of the concept alone in the center, each on a background drawn per concept: every world
    caption names a place and a background, and without them the world draws confetti, not a scene. `token=False`
    drops the trigger (the base model's class prompt on the same backgrounds)."""
    rng = random.Random(f"alone:{concept.token}")
    backgrounds = rng.sample(list(BACKGROUNDS), len(BACKGROUNDS))
    subject = f"{concept.token} {concept.class_word}" if token else concept.class_word
    return [f"photo of a {subject} in the center, {backgrounds[i % len(backgrounds)]} background"
            for i in range(count)]


def context_prompts(concept: ConceptData, count: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, background, position) in world vocabulary, the world's CustomConcept101-style context list."""
    rng = random.Random(f"{concept.token}:{seed}")
    combos = [(b, p) for b in BACKGROUNDS for p in POSITIONS]
    rng.shuffle(combos)
    places = {"center": "in the middle", "left": "on the left", "right": "on the right", "top": "at the top",
              "bottom": "at the bottom"}
    return [(f"photo of a {concept.token} {concept.class_word} {places[p]}, {b} background", b, p)
            for b, p in combos[:count]]


def generate(world: World, method: Method | None, prompts: list[str], seed: int, settings: EvalSettings
             ) -> list[np.ndarray]:
    tokens = method.tokens if method is not None else {}
    with torch.no_grad():
        context = world.text(prompts, tokens)
        regional = method.regional_hook(world.text, prompts, SIZE) if method is not None else None
        delta = method.sampling_delta(prompts, context) if method is not None and regional is None else None

        def eps(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            if c is not context:
                return world.unet(x, t, c)  # the unconditional pass stays base
            return world.unet(x, t, c, delta, regional)

        with world.unet.fixed_contexts():
            latents = sample(eps, context, world.empty, steps=settings.steps, cfg=settings.cfg, seed=seed)
    return world.decode(latents)


def image_alignments(features: Features, generated: dict[str, list[np.ndarray]],
                     references: dict[str, torch.Tensor]) -> dict[str, float]:
    return {c: float((features(images) @ references[c].T).mean()) * 100 for c, images in generated.items()}


def evaluate_concepts(world: World, method: Method | None, concepts: list[ConceptData], features: Features,
                      references: dict[str, torch.Tensor], settings: EvalSettings, seed: int
                      ) -> tuple[dict[str, float], dict[str, list[np.ndarray]], float]:
    """IA of every concept alone, N images each with fixed seeds; one batch for all concepts."""
    n = settings.images_per_concept
    prompts = [p for c in concepts for p in alone_prompts(c, n)]
    started = time.perf_counter()
    images = generate(world, method, prompts, seed, settings)
    seconds = (time.perf_counter() - started) / len(prompts)
    generated = {c.token: images[i * n:(i + 1) * n] for i, c in enumerate(concepts)}
    return image_alignments(features, generated, references), generated, seconds


def text_alignment(world: World, method: Method, concepts: list[ConceptData], evaluator: torch.nn.Module,
                   features: Features, references: dict[str, torch.Tensor], settings: EvalSettings, seed: int
                   ) -> dict[str, float]:
    """Fraction of in-context images showing the asked background, the asked position and the concept."""
    from .evaluators import ATTRIBUTES, to_tensor

    rows = [(c, *row) for c in concepts for row in context_prompts(c, settings.contexts, seed)]
    images = generate(world, method, [r[1] for r in rows], seed + 1, settings)
    with torch.no_grad():
        predicted = evaluator(to_tensor(images))
    names = list(references)
    centroids = torch.nn.functional.normalize(torch.stack([references[t].mean(0) for t in names]), dim=-1)
    nearest = (features(images) @ centroids.T).argmax(-1)
    background = [ATTRIBUTES["background"][int(i)] for i in predicted["background"].argmax(-1)]
    position = [ATTRIBUTES["position"][int(i)] for i in predicted["position"].argmax(-1)]
    parts = {
        "background": float(np.mean([background[i] == r[2] for i, r in enumerate(rows)])),
        "position": float(np.mean([position[i] == r[3] for i, r in enumerate(rows)])),
        "concept": float(np.mean([names[int(nearest[i])] == r[0].token for i, r in enumerate(rows)])),
    }
    return {k: v * 100 for k, v in parts.items()}


def class_drift(world: World, method: Method, prompts: list[str], features: Features, settings: EvalSettings,
                seed: int) -> float:
    """How far `prompts` (no trigger) moved from the base model's images, same prompts and seeds:
    100·mean(1 - cos) of the feature vectors."""
    after, before = generate(world, method, prompts, seed, settings), generate(world, None, prompts, seed, settings)
    return float((1 - (features(after) * features(before)).sum(-1)).mean()) * 100


def protected_class_prompts(concepts: list[ConceptData], settings: EvalSettings) -> list[str]:
    """`photo of a {class}` per learned class: the prompts the gate is fitted to keep off each new expert."""
    return [prior_prompt(w) for w in dict.fromkeys(c.class_word for c in concepts)
            for _ in range(settings.images_per_concept)]


def unseen_class_prompts(concepts: list[ConceptData], seed: int) -> list[str]:
    """Per learned class, one place-and-background wording and one with two of them: class prompts outside the
    gate's protected list."""
    rng = random.Random(f"unseen:{seed}")
    out = []
    for word in dict.fromkeys(c.class_word for c in concepts):
        (b1, b2), (p1, p2) = rng.sample(list(BACKGROUNDS), 2), rng.sample(list(POSITIONS), 2)
        plural = word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")
        out += [f"photo of a {word} {place(p1)}, {b1} background",
                f"photo of two {plural} {place(p2)}, {b2} background"]
    return out


def other_class_prompts(concepts: list[ConceptData], seed: int, count: int = 3) -> list[str]:
    """Prompts of `count` classes no learned concept belongs to, at a place on a background."""
    learned = {c.class_word for c in concepts}
    rng = random.Random(f"other:{seed}")
    words = rng.sample([w for w in CLASS_WORDS if w not in learned], min(count, len(CLASS_WORDS) - len(learned)))
    return [f"photo of a {w} {place(rng.choice(list(POSITIONS)))}, {rng.choice(list(BACKGROUNDS))} background"
            for w in words]


def gate_matrix(world: World, method: Method, concepts: list[ConceptData]) -> list[list[float]]:
    """Mean inference weight of every expert (aux, 1..T) over the projections, for each concept's own prompt."""
    from r2moe_core.moe.routing import inference_coefficients

    bank, rows = method.bank, []
    with torch.no_grad():
        for concept in sorted(concepts, key=lambda c: bank.concept_by_name(c.token.strip("<>")).task):
            m = gate_input(world.text(alone_prompts(concept, 1), method.tokens))
            n = bank.num_experts
            weights = [inference_coefficients(m, p.router(n), p.alive_mask(n), bank.config.top_k,
                                              bank.config.aux_in_inference)[0]
                       for p in bank.projections.values()]
            rows.append([round(float(v), 4) for v in torch.stack(weights).mean(0)])
    return rows


def run_method(name: str, world: World, concepts: list[ConceptData], budget: Budget, features: Features,
               references: References, settings: EvalSettings, seed: int,
               evaluator: torch.nn.Module | None = None) -> MethodRun:
    """The whole sequence for one method: train task t, then score concepts 1..t."""
    order = list(concepts)
    random.Random(seed).shuffle(order)
    torch.manual_seed(seed)
    method = make_method(name, world.unet, budget, seed)
    run = MethodRun(name, [c.token for c in order])
    for t, concept in enumerate(order):
        seconds, losses = train_task(world, method, concept, budget.steps, seed * 1000 + t)
        run.train_s.append(seconds)
        run.losses.append(losses)
        run.params.append(method.params_added())
        run.bytes.append(method.bytes_added())
        ia, generated, per_image = evaluate_concepts(world, method, order[: t + 1], features, references.heldout,
                                                     settings, seed)
        run.ia.append(ia)
        LOG.info("%s seed %d task %d/%d (%s): %.0f s, loss %.3f, IA %s", name, seed, t + 1, len(order),
                 concept.token, seconds, float(np.mean(losses[-20:])), " ".join(f"{v:.1f}" for v in ia.values()))
    run.sample_s_per_image = per_image
    run.final_images = generated
    run.ia_train = image_alignments(features, generated, references.train)
    run.class_drift = class_drift(world, method, protected_class_prompts(order, settings), features, settings, seed)
    run.class_drift_unseen = class_drift(world, method, unseen_class_prompts(order, seed), features, settings, seed)
    run.class_drift_other = class_drift(world, method, other_class_prompts(order, seed), features, settings, seed)
    if hasattr(method, "kept_share"):
        run.kept_share = method.kept_share()
        run.gate_matrix = gate_matrix(world, method, order)
    if evaluator is not None:
        run.ta_parts = text_alignment(world, method, order, evaluator, features, references.heldout, settings, seed)
        run.text_alignment = float(np.mean(list(run.ta_parts.values())))
    return run
