from __future__ import annotations

import torch

import r2moe_core as core
from r2moe_core.moe.delta_cache import BankRuntime
from r2moe_testkit.banks import add_random_concept


def test_deltas_are_computed_once_per_context_and_reused(empty_bank):
    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    runtime = BankRuntime(bank, 1.0)
    context = torch.randn(2, 5, 16)
    for _step in range(4):
        entry = runtime.entry_for(context.clone(), [0])  # a fresh tensor each step, as in sampling
        for name in bank.projection_names():
            assert runtime.delta(entry, name) is not None
    assert runtime.delta_computations == len(bank.projection_names())
    runtime.entry_for(context + 1, [0])
    other = runtime.entry_for(context + 1, [0])
    runtime.delta(other, bank.projection_names()[0])
    assert runtime.delta_computations == len(bank.projection_names()) + 1


def test_cond_ids_key_the_cache_without_reading_values(empty_bank):
    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    runtime = BankRuntime(bank, 1.0)
    name = bank.projection_names()[0]
    first = runtime.entry_for(torch.randn(2, 5, 16), [1, 0], ["u-neg", "u-pos"])
    runtime.delta(first, name)
    again = runtime.entry_for(torch.randn(2, 5, 16), [1, 0], ["u-neg", "u-pos"])  # same conds, next step
    assert again is first and runtime.delta_computations == 1
    other_run = runtime.entry_for(torch.randn(2, 5, 16), [1, 0], ["u-neg2", "u-pos2"])
    runtime.delta(other_run, name)
    assert other_run is not first and runtime.delta_computations == 2


def test_unconditional_rows_get_no_expert(empty_bank):
    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    runtime = BankRuntime(bank, 1.0)
    entry = runtime.entry_for(torch.randn(4, 5, 16), [1, 0])  # uncond chunk first, as ComfyUI batches CFG
    delta = runtime.delta(entry, bank.projection_names()[0])
    assert torch.equal(delta[:2], torch.zeros_like(delta[:2])) and delta[2:].abs().sum() > 0
    only_uncond = runtime.entry_for(torch.randn(2, 5, 16), [1])
    assert runtime.delta(only_uncond, bank.projection_names()[0]) is None


def test_strength_scales_linearly_and_zero_disables(empty_bank):
    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=1)
    context = torch.randn(1, 5, 16)
    name = bank.projection_names()[1]
    full = BankRuntime(bank, 1.0)
    half = BankRuntime(bank, 0.5)
    d1 = full.delta(full.entry_for(context, None), name)
    d2 = half.delta(half.entry_for(context, None), name)
    assert torch.allclose(d2, 0.5 * d1, atol=1e-6)
    assert not BankRuntime(bank, 0.0).has_experts
