"""The world's evaluation models must be trustworthy enough to judge methods: held-out accuracy well above
chance on every attribute, and image alignment that tells one concept from another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from world import concept_images, image_alignment, load_concepts, train_evaluator

WORLD = Path(__file__).resolve().parents[2] / "bench" / "world"


@pytest.fixture(scope="module")
def evaluator():
    torch.set_num_threads(2)
    return train_evaluator(train_images=1200, test_images=400, epochs=3, seed=0)


def test_held_out_accuracy_is_reported_and_well_above_chance(evaluator):
    _, report = evaluator
    # chance: 1/6 to 1/3; the quick evaluator of this test must still be far above it on every attribute
    floors = {"background": 0.9, "position": 0.9, "count": 0.9, "colour": 0.6, "texture": 0.6, "shape": 0.35}
    for attribute, floor in floors.items():
        assert report.accuracy[attribute] >= floor, f"{attribute}: {report.accuracy[attribute]:.2f} < {floor}"


def test_image_alignment_tells_concepts_apart(evaluator):
    model, _ = evaluator
    a, b = load_concepts(WORLD / "concepts_10.json")[:2]
    refs_a = [img for img, _ in concept_images(a, 5, seed=0)]
    more_a = [img for img, _ in concept_images(a, 5, seed=1)]
    more_b = [img for img, _ in concept_images(b, 5, seed=1)]
    assert image_alignment(model, more_a, refs_a) > image_alignment(model, more_b, refs_a) + 0.05
