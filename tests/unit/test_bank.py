from __future__ import annotations

import pytest
import torch

import r2moe_core as core
from r2moe_testkit.banks import add_random_concept


def test_empty_bank_holds_only_the_auxiliary_column(empty_bank):
    assert empty_bank.num_experts == 1 and empty_bank.expert_count() == 0
    for proj in empty_bank.projections.values():
        assert proj.experts == {} and proj.alive_mask(1).tolist() == [True]
        assert torch.equal(proj.router(1), torch.zeros(proj.in_dim, 1))


def test_adding_concepts_grows_task_index_and_router(empty_bank):
    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    bank = add_random_concept(core, bank, "cat", "<cat1>", seed=2)
    assert [c.task for c in bank.concepts] == [1, 2]
    assert all(p.router(bank.num_experts).shape[1] == 3 for p in bank.projections.values())
    assert bank.expert_count() == 2 * len(bank.projections)
    assert empty_bank.num_tasks == 0, "banks are immutable: the input bank must not change"


def test_duplicate_name_or_token_is_refused(empty_bank):
    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    with pytest.raises(core.InvalidInputError, match="already has a concept named 'dog'"):
        add_random_concept(core, bank, "dog", "<dog2>", seed=2)
    with pytest.raises(core.InvalidInputError, match="already used by concept 'dog'"):
        add_random_concept(core, bank, "puppy", "<dog1>", seed=3)


def test_trigger_token_must_be_one_word():
    with pytest.raises(core.InvalidInputError, match="one word"):
        core.Concept("x", "my dog", "dog", 1, torch.zeros(1, 4), torch.zeros(4))


def test_pruning_removes_expert_per_projection_and_records_it(empty_bank):
    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    names = bank.projection_names()
    pruned = bank.without_experts(1, names[:2])
    assert 1 not in pruned.projections[names[0]].experts and 1 in pruned.projections[names[2]].experts
    assert pruned.concepts[0].kept == tuple(names[2:])
    assert pruned.expert_bytes() < bank.expert_bytes()


def test_validate_reports_inconsistent_shapes(empty_bank):
    from dataclasses import replace

    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    name = bank.projection_names()[0]
    broken = dict(bank.projections)
    expert = broken[name].experts[1]
    broken[name] = replace(broken[name], experts={1: replace(expert, up=torch.zeros(bank.config.rank, 3))})
    with pytest.raises(core.BankMismatchError, match=name):
        replace(bank, projections=broken).validate()


def test_training_may_only_add_the_new_expert(empty_bank):
    from dataclasses import replace

    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    concept = replace(bank.concepts[0], name="cat", token="<cat1>", task=2)
    dropped = {n: replace(p, experts={}) for n, p in bank.projections.items()}
    with pytest.raises(core.InvalidInputError, match="may only add expert 2"):
        bank.with_concept(concept, dropped)
