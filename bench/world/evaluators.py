"""Evaluation models trained on the world, standing in for CLIP/DINO in the offline benchmark.

One small CNN with a head per attribute (shape, colour, texture, background, position, count). Its heads measure
text alignment (does the image show what the prompt asked), its normalised penultimate features measure image
alignment (cosine to a concept's reference photos). Its own held-out accuracy is reported with every use.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace

import numpy as np
import torch

from .recogniser import crop  # the multi-concept judge's crop: both metrics read a region the same way
from .scenes import Composite, Scene, random_composite, random_scene, render
from .vocab import BACKGROUNDS, COLOURS, COUNTS, POSITIONS, SHAPES, SIZE, TEXTURES

ATTRIBUTES: dict[str, list] = {
    "shape": list(SHAPES),
    "colour": list(COLOURS),
    "texture": list(TEXTURES),
    "background": list(BACKGROUNDS),
    "position": list(POSITIONS),
    "count": list(COUNTS),
}


def labels(scene: Scene) -> dict[str, int]:
    w = scene.words
    return {
        "shape": SHAPES.index(w["shape"]),
        "colour": list(COLOURS).index(w["colour"]),
        "texture": TEXTURES.index(w["texture"]),
        "background": list(BACKGROUNDS).index(scene.background),
        "position": list(POSITIONS).index(scene.position),
        "count": list(COUNTS).index(scene.count),
    }


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class WorldEvaluator(torch.nn.Module):
    """`size` is the image side it reads: one stride-2 block per halving down to 8x8 (3 blocks at 64 px)."""

    def __init__(self, width: int = 32, feature_dim: int = 128, size: int = SIZE) -> None:
        super().__init__()
        self.size = size

        def block(cin: int, cout: int) -> torch.nn.Sequential:
            return torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.GroupNorm(8, cout), torch.nn.SiLU(),
                torch.nn.Conv2d(cout, cout, 3, padding=1, stride=2), torch.nn.SiLU(),
            )

        widths = [3, width, width * 2] + [width * 4] * (max(size // 8, 1).bit_length() - 3)
        self.body = torch.nn.Sequential(*(block(a, b) for a, b in itertools.pairwise(widths)))
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(width * 4 * 8 * 8, feature_dim))
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(feature_dim, len(v)) for k, v in ATTRIBUTES.items()})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm image features [B, F] for image alignment."""
        return torch.nn.functional.normalize(self.features(self.body(x)), dim=-1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(self.body(x))
        return {k: head(torch.nn.functional.silu(f)) for k, head in self.heads.items()}


@dataclass(frozen=True)
class EvaluatorSettings:
    """A world evaluator's training: how many renders, how many epochs, and the side it reads images at."""

    images: int
    epochs: int
    size: int


BENCH_EVALUATOR = EvaluatorSettings(images=4000, epochs=6, size=SIZE)
"""What the world benchmarks judge by (a shipped file, see `shipped_evaluators`)."""
QUICK_BENCH_EVALUATOR = EvaluatorSettings(images=600, epochs=2, size=SIZE)
"""The benchmarks' `--quick` runs: trained in seconds, only to show the script works end to end."""


@dataclass
class EvaluatorReport:
    accuracy: dict[str, float]  # held-out, per attribute
    train_images: int
    epochs: int


def _dataset(count: int, seed: int, size: int, half_crops: float = 0.0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`half_crops` of the images are one object of a two-object scene, cropped from its named half as
    `two_object_scores` reads it (labelled as one object in the centre); 0 draws exactly the one-kind scenes."""
    rng = random.Random(seed)
    images, ys = [], []
    for _ in range(count):
        if half_crops and rng.random() < half_crops:
            scene = random_composite(rng, 2)
            part = scene.parts[rng.randrange(2)]
            images.append(crop(render(scene, size), HALVES[part.position], size))
            ys.append(labels(replace(part, position="center")))
        else:
            one = random_scene(rng)
            images.append(render(one, size))
            ys.append(labels(one))
    return to_tensor(images), {k: torch.tensor([y[k] for y in ys]) for k in ATTRIBUTES}


def train_evaluator(
    train_images: int = 4000, test_images: int = 800, epochs: int = 6, seed: int = 0, size: int = SIZE,
    half_crops: float = 0.0,
) -> tuple[WorldEvaluator, EvaluatorReport]:
    """Deterministic for a seed; returns the model in eval mode and its held-out accuracy (on one-kind scenes,
    whatever `half_crops`: see `_dataset`)."""
    torch.manual_seed(seed)
    x, y = _dataset(train_images, seed, size, half_crops)
    model = WorldEvaluator(size=size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(train_images, generator=gen)
        for start in range(0, train_images, 64):
            idx = order[start : start + 64]
            out = model(x[idx])
            loss = sum(torch.nn.functional.cross_entropy(out[k], y[k][idx]) for k in ATTRIBUTES)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model, EvaluatorReport(held_out_accuracy(model, test_images, seed + 1_000_003), train_images, epochs)


def held_out_accuracy(model: WorldEvaluator, images: int = 800, seed: int = 1_000_003) -> dict[str, float]:
    """Per attribute, the share of `images` fresh one-kind renders (at the model's size) read right."""
    x, y = _dataset(images, seed, model.size)
    with torch.no_grad():
        out = model(x)
    return {k: float((out[k].argmax(-1) == y[k]).float().mean()) for k in ATTRIBUTES}


def image_alignment(model: WorldEvaluator, generated: list[np.ndarray], references: list[np.ndarray]) -> float:
    """Mean cosine similarity between every generated image and every reference photo (like CLIP-IA/DINO-IA)."""
    with torch.no_grad():
        a, b = model.embed(to_tensor(generated)), model.embed(to_tensor(references))
    return float((a @ b.T).mean())


# The half of the canvas a composite's object is named to be in, as a (x0, y0, x1, y1) box of fractions.
HALVES: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0), "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0)}


def two_object_scores(model: WorldEvaluator, images: list[np.ndarray], scenes: list[Composite]) -> dict[str, float]:
    """Share of two-object images in which both objects are drawn in their named halves: each half is cropped,
    padded to a square with its border colour and read by the single-object heads. `two_objects` asks shape and
    colour of both, `two_objects_colour` colour only (the easier half of the question)."""
    crops, truth = [], []
    for image, scene in zip(images, scenes, strict=True):
        if len(scene.parts) != 2:
            raise ValueError("two_object_scores takes two-object composites only")
        for part in scene.parts:
            crops.append(crop(image, HALVES[part.position], model.size))
            truth.append((SHAPES.index(part.words["shape"]), list(COLOURS).index(part.words["colour"])))
    with torch.no_grad():
        out = model(to_tensor(crops))
    shape_ok = out["shape"].argmax(-1) == torch.tensor([t[0] for t in truth])
    colour_ok = out["colour"].argmax(-1) == torch.tensor([t[1] for t in truth])
    both = (shape_ok & colour_ok).view(-1, 2).all(1)
    return {"two_objects": float(both.float().mean()), "two_objects_colour": float(colour_ok.view(-1, 2).all(1)
                                                                                     .float().mean())}
