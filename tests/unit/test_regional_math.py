"""Regional attention math without a host: grids, batch layouts, mask weights, the blend."""

from __future__ import annotations

import pytest
import torch

from r2moe_core.compose.layout import layout_from_json
from r2moe_core.compose.regional_attention import (
    RegionMasks,
    blend_regions,
    check_masks,
    resize_masks,
    row_spans,
    token_grid,
)
from r2moe_core.errors import InvalidInputError

LAYOUT = layout_from_json(
    {
        "width": 64,
        "height": 32,
        "background": "a room",
        "regions": [
            {"prompt": "left", "box": [0, 0, 0.5, 1]},
            {"prompt": "right", "box": [0.5, 0, 1, 1], "strength": 0.5},
        ],
    }
)


def test_token_grid_from_activations_or_from_the_latent():
    assert token_grid(6 * 8, [2, 320, 6, 8]) == (6, 8)
    assert token_grid(3 * 4, None, [2, 4, 5, 7]) == (3, 4)  # odd latent: ceil(5/2) x ceil(7/2)
    assert token_grid(12, [2, 320, 6, 8], [2, 4, 5, 7]) == (3, 4)  # stale activations are ignored
    with pytest.raises(InvalidInputError, match=r"SD1\.x"):
        token_grid(13, None, [1, 4, 8, 8])


def test_row_spans_merge_neighbours_and_default_to_conditional():
    assert row_spans(4, [1, 0]) == [(0, 2, False), (2, 4, True)]
    assert row_spans(6, [0, 0, 1]) == [(0, 4, True), (4, 6, False)]
    assert row_spans(3, None) == [(0, 3, True)]


def test_region_weights_are_boxes_times_strength_and_cached_per_grid():
    masks = RegionMasks(LAYOUT, strength=2.0)
    weights = masks.weights(2, 4, torch.device("cpu"), torch.float32)
    assert weights.shape == (2, 1, 8, 1)
    assert weights[0, 0, :, 0].view(2, 4).tolist() == [[2, 2, 0, 0], [2, 2, 0, 0]]
    assert weights[1, 0, :, 0].view(2, 4).tolist() == [[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]
    assert masks.weights(2, 4, torch.device("cpu"), torch.float32) is weights and masks.resizes == 1
    masks.weights(1, 2, torch.device("cpu"), torch.float32)
    assert masks.resizes == 2 and masks.sizes == {(2, 4), (1, 2)}


def test_user_masks_are_checked_and_area_resized():
    with pytest.raises(InvalidInputError, match="1 mask"):
        check_masks(torch.ones(1, 8, 8), 2)
    with pytest.raises(InvalidInputError, match="NaN"):
        check_masks(torch.full((2, 4, 4), float("nan")), 2)
    half = torch.zeros(1, 8, 8)
    half[:, :, :2] = 1
    assert resize_masks(half, 2, 2)[0].tolist() == [[0.5, 0.0], [0.5, 0.0]]  # covered fraction per cell


def test_blend_is_the_background_plus_weighted_region_differences():
    base, one, two = torch.zeros(1, 2, 3), torch.ones(1, 2, 3), torch.full((1, 2, 3), 4.0)
    weights = torch.tensor([[1.0, 0.0], [0.0, 0.5]]).view(2, 1, 2, 1)
    out = blend_regions(base, iter([one, two]), weights)
    assert out[0, 0].tolist() == [1, 1, 1] and out[0, 1].tolist() == [2, 2, 2]
    with pytest.raises(InvalidInputError, match="1 outputs for 2"):
        blend_regions(base, [one], weights)
