from __future__ import annotations

import pytest
import torch

import r2moe_core as core


def test_delta_matches_merged_weights_per_row():
    gen = torch.Generator().manual_seed(0)
    experts = {
        i: core.LoraExpert(torch.randn(6, 2, generator=gen), torch.randn(2, 5, generator=gen), torch.zeros(6))
        for i in (1, 3)
    }
    stacked = core.StackedExperts.from_experts(experts, 6, 5)
    context = torch.randn(2, 4, 6, generator=gen)
    coeffs = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    delta = core.expert_delta(context, coeffs, stacked.downs, stacked.ups)
    for row in range(2):
        merged = coeffs[row, 0] * experts[1].delta_weight() + coeffs[row, 1] * experts[3].delta_weight()
        assert torch.allclose(delta[row], context[row] @ merged.T, atol=1e-5)


def test_shapes_are_checked_with_a_readable_message():
    downs, ups = torch.zeros(2, 6, 2), torch.zeros(2, 2, 5)
    with pytest.raises(core.InvalidInputError, match="disagree"):
        core.expert_delta(torch.zeros(2, 4, 6), torch.zeros(2, 3), downs, ups)
    with pytest.raises(core.InvalidInputError, match=r"\[in, r\]"):
        core.LoraExpert(torch.zeros(6, 2), torch.zeros(3, 5), torch.zeros(6))
    with pytest.raises(core.InvalidInputError, match="gate column"):
        core.LoraExpert(torch.zeros(6, 2), torch.zeros(2, 5), torch.zeros(5))
