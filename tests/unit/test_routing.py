from __future__ import annotations

import pytest
import torch

import r2moe_core as core


def test_gate_input_is_token_mean_per_row():
    context = torch.randn(3, 5, 4)
    assert torch.allclose(core.gate_input(context), context.mean(1))
    with pytest.raises(core.InvalidInputError, match="batch, tokens, dim"):
        core.gate_input(torch.randn(5, 4))


def test_topk_plus_forced_softmax_renormalised_per_row():
    scores = torch.tensor([[0.0, 5.0, 1.0, 3.0], [0.0, -1.0, 4.0, 2.0]])
    candidates = torch.tensor([False, True, True, True])
    forced = torch.tensor([True, False, False, False])
    selected = core.select_experts(scores, candidates, 2, forced)
    assert selected.tolist() == [[True, True, False, True], [True, False, True, True]]
    coeffs = core.mixture_coefficients(scores, selected)
    assert torch.allclose(coeffs.sum(1), torch.ones(2))
    assert (coeffs[~selected] == 0).all()
    expected_row0 = torch.softmax(torch.tensor([0.0, 5.0, 3.0]), 0)
    assert torch.allclose(coeffs[0, [0, 1, 3]], expected_row0)


def test_inference_skips_dead_experts_and_honours_aux_choice():
    m = torch.ones(1, 2)
    router = torch.tensor([[0.0, 3.0, 2.0, 1.0], [0.0, 3.0, 2.0, 1.0]])
    alive = torch.tensor([True, False, True, True])  # expert 1 pruned in this projection
    with_aux = core.inference_coefficients(m, router, alive, top_k=1, aux_in_softmax=True)
    assert with_aux[0, 1] == 0 and with_aux[0, 3] == 0
    assert torch.allclose(with_aux[0, [0, 2]], torch.softmax(torch.tensor([0.0, 4.0]), 0))
    without_aux = core.inference_coefficients(m, router, alive, top_k=1, aux_in_softmax=False)
    assert without_aux[0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_empty_pool_gives_zero_weights_not_nan():
    m = torch.randn(2, 3)
    coeffs = core.inference_coefficients(m, torch.zeros(3, 1), torch.tensor([True]), top_k=3, aux_in_softmax=False)
    assert torch.equal(coeffs, torch.zeros(2, 1))


def test_router_shape_is_checked():
    with pytest.raises(core.InvalidInputError, match="does not fit router"):
        core.gate_scores(torch.randn(2, 3), torch.randn(4, 2))


def test_training_selection_forces_aux_and_new_expert_and_topk_minus_one_old():
    m = torch.ones(1, 1)
    # experts 0..4; learning task 4; old experts 1..3 with scores 3, 1, 2; K = 3 -> k' = 2 old (1 and 3)
    router = torch.tensor([[0.0, 3.0, 1.0, 2.0, -5.0]])
    alive = torch.tensor([True, True, True, True, True])
    coeffs = core.training_coefficients(m, router, alive, task=4, top_k=3)
    assert (coeffs[0] > 0).tolist() == [True, True, False, True, True], "aux and new expert in despite low scores"
    assert torch.allclose(coeffs[0, [0, 1, 3, 4]], torch.softmax(torch.tensor([0.0, 3.0, 2.0, -5.0]), 0))
    first_task = core.training_coefficients(m, router[:, :2], alive[:2], task=1, top_k=3)
    assert first_task[0].tolist() == pytest.approx(torch.softmax(torch.tensor([0.0, 3.0]), 0).tolist())
