"""Removing and renaming concepts: the others keep serving, with an honest report of whose mixture moved."""

from __future__ import annotations

import pytest
import torch

import r2moe_core as core
from r2moe_core.moe.bank_edit import removal_summary
from r2moe_core.moe.concept_export import kohya_lora_key, mixture_as_lora
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


@pytest.mark.parametrize(
    ("projection", "key"),
    [
        ("input_blocks.1.1.T.to_k", "down_blocks_0_attentions_0_T_to_k"),
        ("input_blocks.8.1.T.to_v", "down_blocks_2_attentions_1_T_to_v"),
        ("middle_block.1.T.to_k", "mid_block_attentions_0_T_to_k"),
        ("output_blocks.3.1.T.to_k", "up_blocks_1_attentions_0_T_to_k"),
        ("output_blocks.11.1.T.to_v", "up_blocks_3_attentions_2_T_to_v"),
    ],
)
def test_exported_lora_keys_are_the_names_kohya_writes_for_sd1(projection, key):
    full = ".transformer_blocks.0.attn2"
    assert kohya_lora_key(projection.replace(".T", full)) == "lora_unet_" + key.replace("_T", full.replace(".", "_"))


def test_an_exported_mixture_is_the_sum_of_the_selected_experts(library):
    weights = torch.zeros(library.num_experts, len(library.layers), 2)
    weights[1, :, :], weights[3, :, 0] = 0.7, 0.3  # dog everywhere, cat in the K halves
    lora = mixture_as_lora(library, weights)
    name = library.projection_names()[0]  # a K projection
    key = kohya_lora_key(name)
    delta = lora[f"{key}.lora_up.weight"] @ lora[f"{key}.lora_down.weight"]
    experts = library.projections[name].experts
    expected = sum(c * (experts[t].up.T @ experts[t].down.T) for t, c in ((1, 0.7), (3, 0.3)))
    assert torch.allclose(delta, expected, atol=1e-6) and lora[f"{key}.alpha"].item() == 2 * library.config.rank
