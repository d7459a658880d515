"""The world's evaluation models must be trustworthy enough to judge methods: held-out accuracy well above
chance on every attribute, and image alignment that tells one concept from another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from world import concept_images, image_alignment, load_concepts, train_evaluator

WORLD = Path(__file__).resolve().parents[2] / "bench" / "world"
# The quick evaluator of this module reads 64 px scenes: it learns them in about 25 s, while at the benchmark's
# 128 px it needs the benchmark's own budget (4000 images, 6 epochs; 1200 images and 6 epochs read colour 0.58).
# The benchmark's evaluator's held-out accuracy is recorded in every result it judges.
QUICK = 64


@pytest.fixture(scope="module")
def evaluator():
    torch.set_num_threads(2)
    return train_evaluator(train_images=1200, test_images=400, epochs=3, seed=0, size=QUICK)


def test_held_out_accuracy_is_reported_and_well_above_chance(evaluator):
    _, report = evaluator
    # chance: 1/6 to 1/3; the quick evaluator of this test must still be far above it on every attribute
    floors = {"background": 0.9, "position": 0.9, "count": 0.9, "colour": 0.6, "texture": 0.6, "shape": 0.35}
    for attribute, floor in floors.items():
        assert report.accuracy[attribute] >= floor, f"{attribute}: {report.accuracy[attribute]:.2f} < {floor}"


def test_image_alignment_tells_concepts_apart(evaluator):
    model, _ = evaluator
    a, b = load_concepts(WORLD / "concepts_10.json")[:2]
    refs_a = [img for img, _ in concept_images(a, 5, seed=0, size=QUICK)]
    more_a = [img for img, _ in concept_images(a, 5, seed=1, size=QUICK)]
    more_b = [img for img, _ in concept_images(b, 5, seed=1, size=QUICK)]
    assert image_alignment(model, more_a, refs_a) > image_alignment(model, more_b, refs_a) + 0.05


def test_two_object_score_reads_each_object_in_its_named_half(evaluator):
    import random

    import numpy as np
    from world.evaluators import two_object_scores
    from world.scenes import caption, random_composite, render

    model, _ = evaluator
    rng = random.Random(5)
    pairs = [s for s in (random_composite(rng, 2) for _ in range(80)) if s.parts[0].position in ("left", "right")]
    assert " and a " in caption(pairs[0]) and caption(pairs[0]).endswith(" background")
    drawn = [render(s, QUICK) for s in pairs]
    swapped = [np.ascontiguousarray(image[:, ::-1]) for image in drawn]  # each object in the other half
    clean, wrong = two_object_scores(model, drawn, pairs), two_object_scores(model, swapped, pairs)
    assert clean["two_objects_colour"] >= 0.5, clean  # the quick evaluator of this module; the full one: 0.84
    assert wrong["two_objects_colour"] <= 0.2 and wrong["two_objects"] <= clean["two_objects"], wrong


def test_the_cached_evaluator_is_keyed_on_the_code_it_reads_and_nothing_else():
    """For settings with no shipped file: a change to a method or the protocol must not retrain the evaluator
    (minutes per benchmark); a change to the renders, the vocabulary or the crop must."""
    from provenance import REPO, source_closure

    read = {p.relative_to(REPO).as_posix() for p in source_closure(WORLD / "evaluators.py")}
    assert {"bench/world/evaluators.py", "bench/world/scenes.py", "bench/world/vocab.py",
            "bench/world/recogniser.py", "r2moe_core/compose/layout.py"} <= read
    assert not read & {"bench/world/methods.py", "bench/world/protocol.py", "bench/world/unet.py"}
