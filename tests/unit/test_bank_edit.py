"""Removing and renaming concepts: the others keep serving, with an honest report of whose mixture moved."""

from __future__ import annotations

import pytest
import torch

import r2moe_core as core
from r2moe_core.moe.bank_edit import removal_summary
from r2moe_testkit.banks import add_random_concept


@pytest.fixture
def library(empty_bank):
    bank = empty_bank
    for i, name in enumerate(["dog", "mug", "cat", "owl", "car"]):
        # the mug's expert survived pruning in two projections only, so some neighbours never route to it
        kept = bank.projection_names()[:2] if name == "mug" else None
        bank = add_random_concept(core, bank, name, f"<{name}1>", seed=10 + i, projections=kept)
    return bank


def test_removing_a_concept_drops_it_everywhere_and_reports_whose_mixture_moved(library):
    after, changes = core.remove_concept(library, "mug")
    task = library.concept_by_name("mug").task
    assert [c.name for c in after.concepts] == ["dog", "cat", "owl", "car"]
    assert all(task not in p.experts for p in after.projections.values()), "its experts and gate columns go"
    assert all(torch.equal(p.router(after.num_experts)[:, task], torch.zeros(p.in_dim))
               for p in after.projections.values())
    after.validate()
    assert {c.routed_to_removed for c in changes} == {True, False}, "this bank has both kinds of neighbour"
    for change in changes:
        before_mix, after_mix = core.concept_mixtures(library, change.name), core.concept_mixtures(after, change.name)
        if change.routed_to_removed:
            assert change.max_change > 0
        else:  # never routed to the removed expert: bit for bit the same mixture, the same experts
            assert change.max_change == 0.0 and torch.equal(before_mix, after_mix)
            concept = after.concept_by_name(change.name)
            for name, proj in after.projections.items():
                if concept.task in proj.experts:
                    kept = library.projections[name].experts[concept.task]
                    assert torch.equal(proj.experts[concept.task].up, kept.up)
    summary = removal_summary("mug", changes)
    assert summary.startswith("removed 'mug'") and "unchanged" in summary and "routed to it" in summary


def test_removing_an_unknown_concept_names_the_ones_there(library):
    with pytest.raises(core.InvalidInputError, match=r"No concept named 'bird' .*'dog', 'mug'"):
        core.remove_concept(library, "bird")


def test_rename_and_new_token_with_the_training_checks(library):
    renamed = core.rename_concept(library, "dog", new_name="rex", new_token="<rex1>")
    old, new = library.concept_by_name("dog"), renamed.concept_by_name("rex")
    assert new.token == "<rex1>" and new.task == old.task and torch.equal(new.embedding, old.embedding)
    assert renamed.projections == library.projections, "experts and routing untouched"
    assert core.rename_concept(library, "dog", new_token="<hound>").concept_by_name("dog").token == "<hound>"
    for kwargs, message in [({"new_token": "<mug1>"}, "already used by concept 'mug'"),
                            ({"new_name": "cat"}, "already has a concept named 'cat'"),
                            ({"new_token": "<my dog>"}, "one word"),
                            ({}, "both are unchanged")]:
        with pytest.raises(core.InvalidInputError, match=message):
            core.rename_concept(library, "dog", **kwargs)
