"""A concept-identity embedding: image alignment that sees what makes a concept itself.

The world evaluator's features (evaluators.py) are trained to name shape class, colour, texture, background,
position and count; a concept's marking and its own outline barely move them (bench/metric_sensitivity.py), so
image alignment read through them cannot tell a concept drawn with its marking from one drawn without. This
embedding is trained to tell concepts apart across scenes: each class is one random concept, and the classes come
in families (a concept and four copies of it that differ in exactly one attribute: marking, outline, texture or
colour), so no single attribute separates them and every one must be seen; the scenes vary background, position
and size, so the embedding learns to ignore them. A cosine classifier makes the normalised features the quantity
the classes are told apart by, which is what image alignment reads.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from provenance import digest_files, source_closure

from .cache import cached_model
from .concepts import MARKINGS, ConceptSpec, concept_images, random_concept
from .evaluators import WorldEvaluator, to_tensor
from .vocab import TEXTURES

HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class IdentitySettings:
    """How the identity embedding is trained: concept families, scenes per concept, epochs, the side it reads."""

    families: int = 60
    scenes: int = 8
    epochs: int = 8
    size: int = 64
    seed: int = 0


@dataclass
class IdentityReport:
    """Held-out concepts (never trained on): how often a render's nearest reference set is its own concept's, and
    the mean cosine to its own references against the nearest other family member's (a one-attribute change)."""

    retrieval: float
    own: float
    sibling: float


def family(spec: ConceptSpec, rng: random.Random) -> list[ConceptSpec]:
    """`spec` and four copies that each change one attribute to another value the world draws."""
    other = random_concept("other", rng)
    return [spec,
            replace(spec, marking=rng.choice([m for m in MARKINGS if m != spec.marking])),
            replace(spec, polygon=other.polygon),
            replace(spec, texture=rng.choice([t for t in TEXTURES if t != spec.texture])),
            replace(spec, colour=other.colour)]


def family_concepts(count: int, tag: str) -> list[ConceptSpec]:
    rng = random.Random(f"identity:{tag}")
    return [member for i in range(count) for member in family(random_concept(f"{tag}{i}", rng), rng)]


class IdentityEmbedding(torch.nn.Module):
    """The evaluator's convolutional body and feature layer, read at `size` px (images are box-filtered to it)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        net = WorldEvaluator(size=size)
        self.body, self.features = net.body, net.features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=self.size, mode="area")
        return torch.nn.functional.normalize(self.features(self.body(x)), dim=-1)


def renders(specs: list[ConceptSpec], scenes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for label, spec in enumerate(specs):
        images += [p[0] for p in concept_images(spec, scenes, seed=seed)]
        labels += [label] * scenes
    return to_tensor(images), torch.tensor(labels)


def train_identity(settings: IdentitySettings) -> tuple[IdentityEmbedding, IdentityReport]:
    """Deterministic for the settings; returns the embedding in eval mode and its held-out report."""
    torch.manual_seed(settings.seed)
    specs = family_concepts(settings.families, "train")
    x, y = renders(specs, settings.scenes, settings.seed)
    x = torch.nn.functional.interpolate(x, size=settings.size, mode="area")
    model = IdentityEmbedding(settings.size)
    classes = torch.nn.Parameter(torch.randn(len(specs), model.features[-1].out_features) * 0.1)
    optimizer = torch.optim.AdamW([*model.parameters(), classes], lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 64):
            idx = order[start:start + 64]
            logits = 16.0 * model.embed(x[idx]) @ torch.nn.functional.normalize(classes, dim=-1).T
            loss = torch.nn.functional.cross_entropy(logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model, held_out_report(model)


def held_out_report(model: IdentityEmbedding, families: int = 12) -> IdentityReport:
    """Retrieval among held-out families' members: renders of one seed against references of another."""
    specs = family_concepts(families, "heldout")
    with torch.no_grad():
        refs = model.embed(renders(specs, 6, seed=1)[0]).reshape(len(specs), 6, -1)
        probes = model.embed(renders(specs, 6, seed=2)[0]).reshape(len(specs), 6, -1)
    cos = torch.einsum("aif,bjf->abij", probes, refs).mean((2, 3))  # [probe concept, reference concept]
    own = cos.diagonal()
    sibling = torch.stack([cos[i, [j for j in range(5 * (i // 5), 5 * (i // 5) + 5) if j != i]].max()
                           for i in range(len(specs))])
    return IdentityReport(retrieval=float((cos.argmax(1) == torch.arange(len(specs))).float().mean()),
                          own=float(own.mean()) * 100, sibling=float(sibling.mean()) * 100)


def cached_identity(cache: Path | None, settings: IdentitySettings = IdentitySettings()
                    ) -> tuple[IdentityEmbedding, IdentityReport]:
    """Trained once per version of the code it reads and per settings (minutes on 2 cores), then read from cache."""
    digest = hashlib.sha256((digest_files(source_closure(HERE)) + repr(settings)).encode()).hexdigest()[:16]
    return cached_model(cache / f"identity_{digest}.pkl" if cache else None, lambda: train_identity(settings),
                        lambda state: restored_identity(state, settings.size))


def restored_identity(state: dict, size: int) -> IdentityEmbedding:
    model = IdentityEmbedding(size)
    model.load_state_dict(state)
    return model.eval()


def identity_features(model: IdentityEmbedding) -> Callable[[list[np.ndarray]], torch.Tensor]:
    def features(images: list[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            return model.embed(to_tensor(images))
    return features
