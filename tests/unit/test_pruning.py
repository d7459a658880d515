from __future__ import annotations

import pytest

import r2moe_core as core
from r2moe_testkit.banks import add_random_concept


@pytest.fixture
def bank(empty_bank):
    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    return add_random_concept(core, bank, "cat", "<cat1>", seed=2)


def test_threshold_above_every_coefficient_prunes_every_layer(bank, tmp_path):
    before = len(core.bank_to_bytes(bank))
    pruned, report = core.prune_task(bank, task=2, threshold=1.0)
    assert len(report.removed) == len(bank.projection_names()) and report.kept == ()
    assert all(2 not in p.experts for p in pruned.projections.values())
    assert all(1 in p.experts for p in pruned.projections.values()), "other concepts keep their experts"
    assert pruned.concept_by_name("cat").kept == ()
    saved = before - len(core.bank_to_bytes(pruned))
    assert saved >= report.bytes_saved > 0


def test_zero_threshold_prunes_nothing(bank):
    pruned, report = core.prune_task(bank, task=2, threshold=0.0)
    assert pruned is bank and report.removed == () and len(report.kept) == len(bank.projection_names())


def test_threshold_splits_layers_by_the_new_experts_output_share(bank):
    shares = core.new_expert_shares(bank, task=2)
    assert all(0.0 < c < 1.0 for c in shares.values())
    tau = sorted(shares.values())[len(shares) // 2]
    pruned, report = core.prune_task(bank, task=2, threshold=tau)
    assert set(report.removed) == {n for n, c in shares.items() if c < tau}
    assert set(pruned.concept_by_name("cat").kept) == set(report.kept)


def test_reprune_whole_bank_reports_each_concept(bank):
    pruned, reports = core.prune_bank(bank, threshold=1.0)
    assert [r.task for r in reports] == [1, 2] and pruned.expert_count() == 0
    assert "removed 6 of 6" in reports[0].summary()
    with pytest.raises(core.InvalidInputError, match=r"\[0, 1\]"):
        core.prune_task(bank, task=1, threshold=1.5)


def test_overpruning_warns_with_a_threshold_that_keeps_half_the_expert(bank):
    _, report = core.prune_task(bank, task=2, threshold=1.0)
    advice = report.advice()
    assert advice is not None and "removed 100%" in advice and "steps" in advice
    suggested = report.suggested_threshold()
    assert f"prune_threshold to {suggested:g}" in advice
    _, again = core.prune_task(bank, task=2, threshold=suggested)
    assert len(again.kept) >= len(report.removed) / 2, "the suggested τ must keep at least half the slots"
    assert again.advice() is None


def test_light_pruning_gives_no_warning(bank):
    _, report = core.prune_task(bank, task=2, threshold=0.0)
    assert report.removed_share() == 0.0 and report.advice() is None
