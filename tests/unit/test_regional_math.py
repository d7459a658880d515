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


def test_grown_and_feathered_masks_reach_further_soften_and_never_sum_above_one():
    from r2moe_core.compose.regional_attention import BlendSettings, soften_masks

    halves = torch.zeros(2, 8, 8)
    halves[0, :, :4], halves[1, :, 4:] = 1, 1
    grown = soften_masks(halves, BlendSettings(dilate=0.125))  # one cell at 8 cells a side
    assert grown[0, 0, 4] > 0 and grown[0, 0, 5] == 0, "the left mask reaches one cell past its edge"
    assert torch.allclose(grown.sum(0), torch.ones(8, 8)), "where grown masks overlap they share the cell"
    soft = soften_masks(halves, BlendSettings(feather=0.1))
    edge = soft[0, 0]
    assert 0.5 < edge[3] < 1 and 0 < edge[4] < 0.5 and edge[0] > 0.99, "a soft ramp across the edge"
    assert soft.sum(0).max() <= 1 + 1e-6
    assert torch.equal(soften_masks(halves, BlendSettings()), halves)


def test_blend_settings_say_which_layers_blend_and_refuse_nonsense():
    from r2moe_core.compose.regional_attention import BlendSettings

    assert BlendSettings().blends(1, 3) and BlendSettings(min_tokens=256).blends(256, 0)
    assert not BlendSettings(min_tokens=256).blends(64, 0)
    two = BlendSettings(finest_grids=2)
    assert two.blends(4096, 0) and two.blends(1024, 1) and not two.blends(256, 2) and not two.blends(64, 3)
    assert not BlendSettings(min_tokens=2048, finest_grids=2).blends(1024, 1), "both rules must hold"
    for bad in ({"dilate": -0.1}, {"feather": 0.9}, {"feather": float("nan")}, {"min_tokens": -1},
                {"finest_grids": -1}, {"finest_grids": 99}):
        with pytest.raises(InvalidInputError, match=r"dilate|feather|min_tokens|finest_grids"):
            BlendSettings(**bad)


def test_grid_levels_count_from_the_finest_attention_grid_of_each_unet_layout():
    """SD1.x has attention on four grid sizes, SDXL on two (none at full latent size): level 0 is each one's finest
    attention grid, so `finest_grids` names the same kind of layers in both."""
    from torch import nn

    from r2moe_core.compose.grid_levels import grid_levels

    class Downsample(nn.Identity):
        pass

    class Upsample(nn.Identity):
        pass

    def unet(levels: int) -> nn.Module:
        model = nn.Module()
        ins = [nn.Identity()]
        for level in range(levels):
            ins += [nn.Identity(), nn.Identity()] + ([Downsample()] if level < levels - 1 else [])
        outs = []
        for level in range(levels):
            outs += [nn.Identity(), nn.Identity(), nn.Sequential(nn.Identity(), Upsample())
                     if level < levels - 1 else nn.Identity()]
        model.input_blocks, model.output_blocks = nn.ModuleList(ins), nn.ModuleList(outs)
        return model

    def attn(path: str) -> str:
        return f"{path}.1.transformer_blocks.0.attn2"

    sd15 = [attn(p) for p in ("input_blocks.1", "input_blocks.4", "input_blocks.7", "middle_block",
                              "output_blocks.3", "output_blocks.6", "output_blocks.9", "output_blocks.11")]
    levels = grid_levels(unet(4), sd15)
    assert [levels[n] for n in sd15] == [0, 1, 2, 3, 2, 1, 0, 0]
    sdxl = [attn(p) for p in ("input_blocks.4", "input_blocks.7", "middle_block", "output_blocks.0",
                              "output_blocks.3", "output_blocks.5")]  # no attention in the first level
    levels = grid_levels(unet(3), sdxl)
    assert [levels[n] for n in sdxl] == [0, 1, 1, 1, 0, 0]
    with pytest.raises(InvalidInputError, match="finest_grids"):
        grid_levels(nn.Linear(2, 2), sd15)
    with pytest.raises(InvalidInputError, match="not in this UNet"):
        grid_levels(unet(2), [attn("output_blocks.40")])


def test_blending_outputs_equals_masking_attention_probabilities():
    """The reference code multiplies each prompt's attention probabilities by its mask and sums the outputs; the
    pack blends outputs. A mask weighs a whole query row, so the two are the same function."""
    torch.manual_seed(0)
    q, tokens = torch.randn(1, 6, 4), 6
    kvs = [(torch.randn(1, 5, 4), torch.randn(1, 5, 4)) for _ in range(3)]  # background, region 1, region 2
    masks = torch.tensor([[1.0, 1, 0, 0, 0, 0], [0, 0, 0, 0.5, 1, 1]]).view(2, 1, tokens, 1)

    def probabilities(k: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1)

    outputs = [probabilities(k) @ v for k, v in kvs]
    background = 1 - masks.sum(0)
    reference = (background * probabilities(kvs[0][0])) @ kvs[0][1] + sum(
        (masks[i] * probabilities(kvs[i + 1][0])) @ kvs[i + 1][1] for i in range(2))
    assert torch.allclose(blend_regions(outputs[0], iter(outputs[1:]), masks), reference, atol=1e-6)
