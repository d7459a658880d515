"""Masks from the concepts' own cross-attention, without a host: recording, thresholding, the rules for noise,
sinks, overlaps and failures."""

from __future__ import annotations

import math

import pytest
import torch

from r2moe_core import BankConfig, ExpertBank, compute_fingerprint
from r2moe_core.compose.layout import box_masks, layout_from_json
from r2moe_core.compose.masks.attention_masks import (
    AttentionMaskOptions,
    ConceptAttention,
    masks_from_attention,
    otsu_threshold,
    strongest_component,
)
from r2moe_core.compose.regional_attention import RegionalRuntime
from r2moe_core.errors import InvalidInputError
from r2moe_testkit.small import small_layers, weights_for

LAYOUT = layout_from_json({"width": 64, "height": 64, "background": "a room", "regions": [
    {"prompt": "a <a1> toy", "box": [0, 0, 0.5, 1]}, {"prompt": "a <b1> toy", "box": [0.5, 0, 1, 1]}]})


def blob(h: int, w: int, cy: float, cx: float, radius: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return ((ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2).float()


def test_a_blob_of_attention_becomes_the_mask_and_the_rest_of_the_box_is_dropped():
    maps = torch.stack([blob(16, 16, 8, 4, 3), blob(16, 16, 6, 12, 2.5)]) + 0.05 * torch.rand(2, 16, 16)
    result = masks_from_attention(maps, LAYOUT, 64, 64, AttentionMaskOptions(grow=0))
    assert result.fallbacks == ()
    expected = torch.nn.functional.interpolate(torch.stack([blob(16, 16, 8, 4, 3), blob(16, 16, 6, 12, 2.5)])[:, None],
                                               size=(64, 64), mode="nearest")[:, 0]
    assert torch.equal(result.masks, expected)
    assert 0.05 < result.coverage[0] < 0.4 and 0.05 < result.coverage[1] < 0.4


def test_grow_widens_the_mask_by_whole_cells():
    maps = torch.stack([blob(16, 16, 8, 4, 2), blob(16, 16, 8, 12, 2)])
    tight = masks_from_attention(maps, LAYOUT, 16, 16, AttentionMaskOptions(grow=0, min_coverage=0)).masks
    grown = masks_from_attention(maps, LAYOUT, 16, 16, AttentionMaskOptions(grow=1, min_coverage=0)).masks
    assert torch.equal(grown[0], torch.nn.functional.max_pool2d(tight[0][None, None], 3, 1, 1)[0, 0])
    assert grown.sum() > tight.sum()


def test_stray_cells_and_attention_sinks_do_not_shape_the_mask():
    first = blob(16, 16, 8, 4, 3) * 0.8
    first[1, 1] = 0.6  # a stray cell apart from the object: not the strongest group
    first[15, 7] = 50.0  # a sink: clipped to the 99th percentile, so it cannot flatten the object's values
    maps = torch.stack([first, blob(16, 16, 8, 12, 3)])
    mask = masks_from_attention(maps, LAYOUT, 16, 16, AttentionMaskOptions(grow=0)).masks[0]
    assert mask[8, 4] == 1 and mask[1, 1] == 0
    assert mask.sum() >= blob(16, 16, 8, 4, 3).sum() - 1


def test_masks_stay_near_their_box_and_overlaps_go_to_the_stronger_region():
    maps = torch.stack([torch.ones(16, 16), torch.zeros(16, 16)])
    maps[0, :, :] = torch.linspace(1, 0, 16)  # region 0 attends everywhere, most on the left
    maps[1] = blob(16, 16, 8, 9, 3)  # region 1's object straddles the boxes' border
    options = AttentionMaskOptions(margin=0.125, grow=0)
    masks = masks_from_attention(maps, LAYOUT, 16, 16, options).masks
    assert masks[0][:, 10:].sum() == 0, "no further than the margin (2 cells) past the box"
    assert (masks.sum(0) <= 1).all(), "a cell has one owner"
    assert masks[1][8, 7] == 1, "the object may reach past its box by the margin"


def test_a_flat_or_tiny_map_falls_back_to_the_box():
    maps = torch.stack([torch.full((16, 16), 0.3), blob(16, 16, 8, 12, 0.6)])
    result = masks_from_attention(maps, LAYOUT, 32, 32, AttentionMaskOptions(min_coverage=0.1))
    assert result.fallbacks == (0, 1)
    assert torch.equal(result.masks, box_masks(LAYOUT, 32, 32))


def test_otsu_and_components():
    values = torch.cat([torch.full((50,), 0.1), torch.full((50,), 0.9)])
    assert 0.1 < otsu_threshold(values) <= 0.9
    cells = torch.zeros(6, 6, dtype=torch.bool)
    cells[0, 0] = cells[0, 1] = True  # small group, weak
    cells[3:6, 3:6] = True  # large group
    score = torch.ones(6, 6)
    kept = strongest_component(cells, score)
    assert kept[4, 4] and not kept[0, 0]
    score[0, 0] = 100.0
    assert strongest_component(cells, score)[0, 0]


def test_recording_reads_the_concept_tokens_per_head():
    torch.manual_seed(0)
    heads, per_head, tokens, prompt = 2, 4, 16, 5
    q = torch.randn(3, tokens, heads * per_head)
    keys = [torch.randn(1, prompt, heads * per_head) for _ in range(2)]
    recorder = ConceptAttention([[1, 2], [3]])
    recorder.record(q, keys, heads, (4, 4))  # not recording yet: nothing kept
    assert recorder.maps() is None
    recorder.recording = True
    recorder.record(q, keys, heads, (4, 4))
    recorder.record(q[:, :4], keys, heads, (2, 2))
    manual = []
    for k, where in zip(keys, ([1, 2], [3]), strict=True):
        qh = q[0].view(tokens, heads, per_head).transpose(0, 1)
        kh = k[0].view(prompt, heads, per_head).transpose(0, 1)
        p = (qh @ kh.transpose(-1, -2) / math.sqrt(per_head)).softmax(-1)
        manual.append(p[..., where].sum(-1).mean(0).view(4, 4))
    coarse = []
    for k, where in zip(keys, ([1, 2], [3]), strict=True):
        qh = q[0, :4].view(4, heads, per_head).transpose(0, 1)
        kh = k[0].view(prompt, heads, per_head).transpose(0, 1)
        p = (qh @ kh.transpose(-1, -2) / math.sqrt(per_head)).softmax(-1)
        coarse.append(p[..., where].sum(-1).mean(0).view(1, 1, 2, 2))
    up = torch.nn.functional.interpolate(torch.cat(coarse), size=(4, 4), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(recorder.maps(), (torch.stack(manual) + up) / 2, atol=1e-6)
    assert recorder.records == 2
    with pytest.raises(InvalidInputError, match="heads"):
        recorder.record(q, keys, 3, (4, 4))
    with pytest.raises(InvalidInputError, match="no prompt tokens"):
        ConceptAttention([[1], []])


def test_the_runtime_records_only_while_asked_and_samples_the_same():
    layers = small_layers(in_dim=8, widths=(8, 8, 8))
    bank = ExpertBank.empty(BankConfig(rank=2, top_k=1), layers, compute_fingerprint(layers, weights_for(layers)),
                            token_dim=8)
    layer = layers[0]
    torch.manual_seed(1)
    context = torch.randn(1, 5, 8)
    runtime = RegionalRuntime(bank, LAYOUT, context, [context + 1, context - 1], strength=1.0)
    to_k, to_v = torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False)
    q = torch.randn(2, 16, 8)

    def attention(qq, kk, vv):
        return torch.nn.functional.scaled_dot_product_attention(qq, kk, vv)

    plain = runtime.attend(q, (4, 4), layer, to_k, to_v, torch.float32, attention, heads=2)
    runtime.recorder = ConceptAttention([[1], [2]])
    runtime.reset()
    same = runtime.attend(q, (4, 4), layer, to_k, to_v, torch.float32, attention, heads=2)
    assert runtime.recorder.records == 0
    runtime.recorder.recording = True
    recorded = runtime.attend(q, (4, 4), layer, to_k, to_v, torch.float32, attention, heads=2)
    assert runtime.recorder.records == 1 and runtime.recorder.maps().shape == (2, 4, 4)
    assert torch.equal(plain, same) and torch.equal(plain, recorded)


@pytest.mark.parametrize("bad", [{"margin": -0.1}, {"margin": float("nan")}, {"grow": 17}, {"min_coverage": 2.0}])
def test_options_are_checked(bad):
    with pytest.raises(InvalidInputError):
        AttentionMaskOptions(**bad)
