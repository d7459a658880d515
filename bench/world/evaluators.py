"""Evaluation models trained on the world, standing in for CLIP/DINO in the offline benchmark.

One small CNN with a head per attribute (shape, colour, texture, background, position, count). Its heads measure
text alignment (does the image show what the prompt asked), its normalised penultimate features measure image
alignment (cosine to a concept's reference photos). Its own held-out accuracy is reported with every use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .scenes import Scene, random_scene, render
from .vocab import BACKGROUNDS, COLOURS, COUNTS, POSITIONS, SHAPES, TEXTURES

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
    def __init__(self, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> torch.nn.Sequential:
            return torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.GroupNorm(8, cout), torch.nn.SiLU(),
                torch.nn.Conv2d(cout, cout, 3, padding=1, stride=2), torch.nn.SiLU(),
            )

        self.body = torch.nn.Sequential(block(3, width), block(width, width * 2), block(width * 2, width * 4))
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(width * 4 * 8 * 8, feature_dim))
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(feature_dim, len(v)) for k, v in ATTRIBUTES.items()})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm image features [B, F] for image alignment."""
        return torch.nn.functional.normalize(self.features(self.body(x)), dim=-1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(self.body(x))
        return {k: head(torch.nn.functional.silu(f)) for k, head in self.heads.items()}


@dataclass
class EvaluatorReport:
    accuracy: dict[str, float]  # held-out, per attribute
    train_images: int
    epochs: int


def _dataset(count: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    ys = [labels(s) for s in scenes]
    return to_tensor([render(s) for s in scenes]), {k: torch.tensor([y[k] for y in ys]) for k in ATTRIBUTES}


def train_evaluator(
    train_images: int = 4000, test_images: int = 800, epochs: int = 6, seed: int = 0
) -> tuple[WorldEvaluator, EvaluatorReport]:
    """Deterministic for a seed; returns the model in eval mode and its held-out accuracy."""
    torch.manual_seed(seed)
    x, y = _dataset(train_images, seed)
    x_test, y_test = _dataset(test_images, seed + 1_000_003)
    model = WorldEvaluator()
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
    with torch.no_grad():
        out = model(x_test)
    accuracy = {k: float((out[k].argmax(-1) == y_test[k]).float().mean()) for k in ATTRIBUTES}
    return model, EvaluatorReport(accuracy, train_images, epochs)


def image_alignment(model: WorldEvaluator, generated: list[np.ndarray], references: list[np.ndarray]) -> float:
    """Mean cosine similarity between every generated image and every reference photo (like CLIP-IA/DINO-IA)."""
    with torch.no_grad():
        a, b = model.embed(to_tensor(generated)), model.embed(to_tensor(references))
    return float((a @ b.T).mean())
