"""Merging banks: every concept of both, each routed as in its own bank; clashes refused or renamed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import r2moe_core as core
from r2moe_core.moe.bank_merge import merge_banks
from r2moe_testkit.banks import add_random_concept
from r2moe_testkit.small import weights_for


def grow(bank, names, seed, common):
    """Concepts whose prompts are nearly parallel, as SD text embeddings are (cosine ~0.99)."""
    for i, name in enumerate(names):
        bank = add_random_concept(core, bank, name, f"<{name}1>", seed=seed + i)
        gen = torch.Generator().manual_seed(1000 + seed + i)
        concept = bank.concepts[-1]
        near = common + 0.1 * torch.randn(common.shape, generator=gen)
        bank = replace(bank, concepts=(*bank.concepts[:-1], replace(concept, gate_input=near)))
    return bank


@pytest.fixture
def common(empty_bank):
    return torch.randn(empty_bank.layers[0].in_dim, generator=torch.Generator().manual_seed(7))


def placed_mixture(source, name, merged, merged_name, task_of):
    """The source bank's mixture of `name` laid out in the merged bank's expert columns."""
    before = core.concept_mixtures(source, name)
    placed = torch.zeros(before.shape[0], merged.num_experts)
    for source_id in range(source.num_experts):
        placed[:, task_of(source_id)] = before[:, source_id]
    return placed, core.concept_mixtures(merged, merged_name)


def test_every_concept_of_both_banks_routes_as_in_its_own_bank(empty_bank, common):
    a = grow(empty_bank, ["dog", "mug", "cat"], 10, common)
    b = grow(empty_bank, ["owl", "car"], 20, common)
    merged, report = merge_banks(a, b)
    assert [c.name for c in merged.concepts] == ["dog", "mug", "cat", "owl", "car"]
    assert [c.task for c in merged.concepts] == [1, 2, 3, 4, 5] and merged.num_tasks == 5
    for c in a.concepts:
        placed, after = placed_mixture(a, c.name, merged, c.name, lambda i: i)
        assert (after - placed).abs().max() < 1e-5
    for c in b.concepts:
        placed, after = placed_mixture(b, c.name, merged, c.name, lambda i: 0 if i == 0 else i + 3)
        assert (after - placed).abs().max() < 1e-5
    assert report.max_mixture_change < 1e-5
    for name in a.projection_names():  # experts and tokens carry over unchanged
        for task, expert in b.projections[name].experts.items():
            got = merged.projections[name].experts[task + 3]
            assert torch.equal(got.down, expert.down) and torch.equal(got.up, expert.up)
    assert torch.equal(merged.concept_by_name("owl").embedding, b.concept_by_name("owl").embedding)
    # The plain union (columns copied, no fitting) blends B's experts into A's prompts: what the fit prevents.
    naive = replace(merged, projections={
        n: replace(p, experts={i: replace(e, gate=(a if i <= 3 else b).projections[n].experts[i if i <= 3 else i - 3]
                                          .gate) for i, e in p.experts.items()})
        for n, p in merged.projections.items()})
    placed, after = placed_mixture(a, "dog", naive, "dog", lambda i: i)
    assert (after - placed).abs().max() > 0.05


def test_banks_with_a_common_ancestor_keep_the_shared_concept_once(empty_bank, common):
    base = grow(empty_bank, ["dog"], 10, common)
    a = grow(base, ["mug"], 30, common)
    b = grow(base, ["cat"], 40, common)
    # Learning 'cat' moved the dog expert's gate columns in B along cat's prompt (as routing updates do)
    cat_input = b.concept_by_name("cat").gate_input
    b = replace(b, projections={n: replace(p, experts={**p.experts, 1: replace(
        p.experts[1], gate=p.experts[1].gate + 0.3 * cat_input / cat_input.square().sum())})
        for n, p in b.projections.items()})
    merged, report = merge_banks(a, b)
    assert [c.name for c in merged.concepts] == ["dog", "mug", "cat"] and report.shared == ("dog",)
    placed, after = placed_mixture(b, "cat", merged, "cat", lambda i: {0: 0, 1: 1, 2: 3}[i])
    assert (after - placed).abs().max() < 1e-5, "cat still draws on the dog expert as much as in B"
    for name in ("dog", "mug"):
        placed, after = placed_mixture(a, name, merged, name, lambda i: i)
        assert (after - placed).abs().max() < 1e-5


def test_protected_prompts_keep_their_scores(empty_bank, common):
    a = grow(empty_bank, ["dog"], 10, common)
    b = grow(empty_bank, ["owl"], 20, common)
    plain = common[None] + 0.1 * torch.randn(2, common.shape[0], generator=torch.Generator().manual_seed(3))
    merged, _ = merge_banks(a, b, protected=plain)
    for name, proj in merged.projections.items():
        assert torch.allclose(plain @ proj.experts[1].gate, plain @ a.projections[name].experts[1].gate, atol=1e-4)
        assert torch.allclose(plain @ proj.experts[2].gate, plain @ b.projections[name].experts[1].gate, atol=1e-4)


def test_clashing_names_or_tokens_are_refused_or_renamed(empty_bank, common):
    a = grow(empty_bank, ["dog"], 10, common)
    b = grow(empty_bank, ["dog"], 99, common)  # another dog, same name and token
    with pytest.raises(core.InvalidInputError, match=r"clashes with bank A's 'dog' .*on_clash to 'rename incoming'"):
        merge_banks(a, b)
    merged, report = merge_banks(a, b, on_clash="rename incoming")
    assert [(c.name, c.token) for c in merged.concepts] == [("dog", "<dog1>"), ("dog 2", "<dog1_2>")]
    assert "write <dog1_2>" in report.summary()
    with pytest.raises(core.InvalidInputError, match="on_clash must be one of"):
        merge_banks(a, b, on_clash="overwrite")


def test_banks_of_other_models_or_settings_are_refused(empty_bank, layers, common):
    a = grow(empty_bank, ["dog"], 10, common)
    other_weights = core.compute_fingerprint(layers, {k: v + 1 for k, v in weights_for(layers).items()})
    other = grow(replace(empty_bank, fingerprint=other_weights), ["owl"], 20, common)
    with pytest.raises(core.BankMismatchError, match="different base models"):
        merge_banks(a, other)
    wider = core.ExpertBank.empty(core.BankConfig(rank=4, top_k=2), layers, empty_bank.fingerprint, token_dim=16)
    with pytest.raises(core.InvalidInputError, match="expert rank"):
        merge_banks(a, grow(wider, ["owl"], 20, common))


def test_two_concepts_learned_from_one_prompt_cannot_be_routed_apart(empty_bank, common):
    a = grow(empty_bank, ["dog"], 10, common)
    b = grow(empty_bank, ["owl"], 20, common)
    b = replace(b, concepts=(replace(b.concepts[0], gate_input=a.concepts[0].gate_input),))
    with pytest.raises(core.InvalidInputError, match="cannot be routed apart"):
        merge_banks(a, b)

