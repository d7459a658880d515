"""The gate tells concepts apart and pruning follows the data (toy world, the real training loop).

A concept that repeats an old one (same photos, new name) is served by the old expert and loses its own; a new
subject keeps its expert; each concept's prompt routes to its own expert and a plain prompt to none.
"""

from __future__ import annotations

import pytest
import torch

import r2moe_core as core
from r2moe_core.moe.routing import gate_input, inference_coefficients
from r2moe_core.moe.routing_update import plain_prompts
from r2moe_testkit.toy_tasks import ToyWorld, eval_loss, learn

TAU = 0.4


@pytest.fixture(scope="module")
def world():
    return ToyWorld.make()


def _learn_pruned(world, bank, name, seed, **kw):
    learned, _ = learn(world, bank, name, seed=seed, **kw)
    return core.prune_task(learned, learned.num_tasks, TAU)


@pytest.fixture(scope="module")
def sequence(world):
    """dog, cat, cow, then the dog's photos again as `dup` (class dog); each pruned at τ = 0.4."""
    bank, reports = world.bank, {}
    for name, seed, kw in (("dog", 1, {}), ("cat", 2, {}), ("cow", 4, {}),
                           ("dup", 3, {"class_word": "dog", "photos_seed": 1})):
        bank, reports[name] = _learn_pruned(world, bank, name, seed, **kw)
    return bank, reports


def test_a_concept_that_repeats_an_old_one_loses_its_new_expert(world, sequence):
    bank, reports = sequence
    assert reports["dup"].removed_share() >= 0.75, reports["dup"].summary()
    assert eval_loss(world, bank, "dup", 1, "dog") < 0.7 * eval_loss(world, world.bank, "dup", 1, "dog"), "still drawn"


def test_new_subjects_keep_their_experts(sequence):
    _, reports = sequence
    for name in ("dog", "cat", "cow"):
        assert len(reports[name].kept) >= len(reports[name].shares) / 2, reports[name].summary()


def test_a_new_subject_of_a_known_class_keeps_its_expert(world, sequence):
    bank, _ = sequence
    _, report = _learn_pruned(world, bank, "pup", 5, class_word="dog", photos_seed=9)
    assert len(report.kept) >= len(report.shares) / 2, report.summary()


def test_kept_pattern_is_not_the_complement_of_the_previous_task(sequence):
    bank, reports = sequence
    everything = set(bank.projection_names())
    for before, after in (("dog", "cat"), ("cat", "cow")):
        assert set(reports[after].kept) != everything - set(reports[before].kept)


def _mixture(bank, world, prompt):
    embeddings = {c.token: c.embedding for c in bank.concepts}
    m = gate_input(world.encoder([prompt], embeddings))
    n = bank.num_experts
    return {name: inference_coefficients(m, p.router(n), p.alive_mask(n), bank.config.top_k)[0]
            for name, p in bank.projections.items()}


def test_each_prompt_routes_to_its_own_expert_and_a_plain_prompt_to_none(world, sequence):
    bank, _ = sequence
    own = {c.name: c.task for c in bank.concepts if c.name != "dup"}
    for name, task in own.items():
        concept = bank.concept_by_name(name)
        mix = _mixture(bank, world, f"photo of {concept.token} {concept.class_word}")
        wins = sum(int(torch.argmax(g[1:])) + 1 == task for g in mix.values())
        assert wins >= 0.75 * len(mix), f"{name}: its expert leads in {wins} of {len(mix)} projections"
        for other in own.values():
            if other != task:
                borrowed = max(float(g[other]) for g in mix.values())
                assert borrowed < 0.1, f"{name} borrows expert {other} (weight up to {borrowed:.2f})"
    dup = bank.concept_by_name("dup")
    mix = _mixture(bank, world, f"photo of {dup.token} dog")
    assert sum(int(torch.argmax(g[1:])) + 1 == own["dog"] for g in mix.values()) >= 0.75 * len(mix)
    plain = _mixture(bank, world, "photo of dog")
    assert all(float(g[0]) > 0.99 for g in plain.values()), "a prompt without a trigger uses no expert"


def test_the_trigger_routes_without_the_captions_scene_words(world):
    """Captions name a scene; the gate must key on the trigger token, not on the scene words. The new expert
    starts at half of its mixture (the no-op auxiliary expert holds the other half), so "routes to it" means a
    weight near that on the bare prompt and on a scene it never saw, and none on the scene without the trigger.
    (Protecting only the plain prompts gave the bare prompt 0.01.)"""
    learned, _ = learn(world, world.bank, "dog", seed=1, scenes=("grass", "snow"))
    for prompt in ("photo of <dog1> dog", "photo of <dog1> dog on beach"):
        mix = _mixture(learned, world, prompt)
        routed = sum(float(g[1]) >= 0.2 for g in mix.values())
        assert routed >= 0.75 * len(mix), f"{prompt!r}: the expert has weight >= 0.2 in {routed} of {len(mix)}"
    for prompt in ("photo of dog on grass", "photo of cat on grass"):
        mix = _mixture(learned, world, prompt)
        assert all(float(g[0]) > 0.99 for g in mix.values()), f"{prompt!r} (no trigger) uses an expert"


def test_protected_prompts_include_the_captions_without_their_trigger():
    plain = plain_prompts(["dog", "dog"], ["photo of <d1> dog on grass", "<d1> dog, snow"], "<d1>")
    assert plain == ["", "photo of a dog", "photo of dog on grass", "dog, snow"]
    assert plain_prompts(["dog"]) == ["", "photo of a dog"]
