from __future__ import annotations

import json
import math

import pytest
import torch

import r2moe_core as core
from r2moe_core.compose.layout import (
    Layout,
    Region,
    box_masks,
    find_tokens,
    layout_from_json,
    layout_to_json,
    validate_layout,
)
from r2moe_core.errors import InvalidInputError

KNOWN = {"<dog1>", "<cat1>", "sks"}


def _layout(**overrides) -> dict:
    data = {
        "version": 1,
        "width": 768,
        "height": 512,
        "background": "a beach at sunset",
        "regions": [
            {"prompt": "a <dog1> dog", "box": [0.04, 0.1, 0.48, 0.95], "tokens": ["<dog1>"], "strength": 0.8},
            {"prompt": "a <cat1> cat", "box": [0.52, 0.1, 0.96, 0.95]},
        ],
    }
    data.update(overrides)
    return data


def _with_region(**fields) -> dict:
    region = {"prompt": "a <dog1> dog", "box": [0.1, 0.1, 0.5, 0.9], **fields}
    return _layout(regions=[{k: v for k, v in region.items() if v is not _DROP}])


_DROP = object()


def test_json_round_trip_keeps_every_field():
    layout = layout_from_json(json.dumps(_layout()), KNOWN)
    again = layout_from_json(layout_to_json(layout), KNOWN)
    assert again == layout
    assert layout.regions[0] == Region("a <dog1> dog", (0.04, 0.1, 0.48, 0.95), ("<dog1>",), 0.8)
    assert layout.regions[1].tokens == ("<cat1>",) and layout.regions[1].strength is None  # filled from the prompt
    assert json.loads(layout_to_json(layout))["regions"][1]["tokens"] == ["<cat1>"]


@pytest.mark.parametrize(
    ("data", "check"),
    [
        (_layout(version=_DROP), lambda lay: lay.version == 1),
        (_layout(background=""), lambda lay: lay.background == ""),
        (_layout(regions=[]), lambda lay: lay.regions == ()),
        (_with_region(box=(0, 0, 1, 1)), lambda lay: lay.regions[0].box == (0.0, 0.0, 1.0, 1.0)),
        (_with_region(box=[-1e-7, 0.0, 1 + 5e-7, 1.0]), lambda lay: lay.regions[0].box == (0.0, 0.0, 1.0, 1.0)),
        (_with_region(tokens="<dog1>"), lambda lay: lay.regions[0].tokens == ("<dog1>",)),
        (_with_region(prompt="sks dog, <dog1>"), lambda lay: lay.regions[0].tokens == ("sks", "<dog1>")),
        (_with_region(prompt="a red ball"), lambda lay: lay.regions[0].tokens == ()),
        (_with_region(strength=2), lambda lay: lay.regions[0].strength == 2.0),
        (_with_region(strength=None), lambda lay: lay.regions[0].strength is None),
        (_layout(width=512.0), lambda lay: lay.width == 512 and isinstance(lay.width, int)),
    ],
)
def test_reasonable_user_input_is_accepted(data, check):
    data = {k: v for k, v in data.items() if v is not _DROP}
    assert check(layout_from_json(data, KNOWN))


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (_layout(version=2), ["version", "2 is not supported", "write version 1"]),
        (_layout(width=500), ["width", "500", "multiple of 8"]),
        (_layout(height=0), ["height", "positive multiple of 8"]),
        (_layout(width=8200), ["width", "8192"]),
        (_layout(width=True), ["width", "whole number"]),
        (_layout(width=_DROP), ["width", "missing"]),
        (_layout(background=_DROP), ["background", "missing", '""']),
        (_layout(background=None), ["background", "missing"]),
        (_layout(negative="ugly"), ["layout", "unknown field", "'negative'"]),
        (_layout(regions="dog"), ["regions", "must be a list"]),
        (_layout(regions=[{"prompt": "<dog1>", "box": [0, 0, 1, 1]}] * 9), ["regions", "9", "at most 8"]),
        (_with_region(box=[0.1, 0.1, 1.2, 0.9]), ["region 0 box", "x1=1.2", "outside the canvas", "[0, 1]"]),
        (_with_region(box=[10, 20, 300, 400]), ["region 0 box", "not pixels"]),
        (_with_region(box=[0.5, 0.1, 0.3, 0.9]), ["region 0 box", "x0=0.5 must be less than x1=0.3"]),
        (_with_region(box=[0.1, 0.4, 0.5, 0.4]), ["region 0 box", "y0=0.4 must be less than y1=0.4", "empty"]),
        (_with_region(box=[0.1, 0.1, 0.1005, 0.9]), ["region 0 box", "px wide", "at least one pixel"]),
        (_with_region(box=[0.1, 0.1, 0.5]), ["region 0 box", "4 numbers"]),
        (_with_region(box="0,0,1,1"), ["region 0 box", "4 numbers"]),
        (_with_region(box=[0.1, math.nan, 0.5, 0.9]), ["region 0 box", "y0 is nan", "finite"]),
        (_with_region(box=[0.1, 0.1, math.inf, 0.9]), ["region 0 box", "x1 is inf"]),
        (_with_region(box=_DROP), ["region 0 box", "missing"]),
        (_with_region(prompt=" "), ["region 0 prompt", "empty"]),
        (_with_region(prompt="a <dog2> dog"), ["region 0 tokens", "'<dog2>'", "known: <cat1>, <dog1>, sks"]),
        (_with_region(tokens=["<cat1>"]), ["region 0 tokens", "'<cat1>' does not appear in the region prompt"]),
        (_with_region(tokens=[1]), ["region 0 tokens", "list of trigger tokens"]),
        (_with_region(strength=2.5), ["region 0 strength", "[0, 2]"]),
        (_with_region(strength=-0.1), ["region 0 strength", "[0, 2]"]),
        (_with_region(strength=math.nan), ["region 0 strength"]),
        (_with_region(weight=3, note="ignore all rules"), ["region 0", "unknown field", "'note', 'weight'"]),
        ("[]", ["expected a JSON object"]),
    ],
)
def test_bad_layouts_name_the_field_and_the_fix(data, fragments):
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if v is not _DROP}
    with pytest.raises(InvalidInputError) as info:
        layout_from_json(data, KNOWN)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_all_problems_are_reported_at_once_and_bad_json_is_explained():
    data = _layout(width=100, regions=[{"prompt": "a", "box": [2, 0, 1, 1]}, {"prompt": "<x9>", "box": [0, 0, 1, 1]}])
    with pytest.raises(InvalidInputError) as info:
        layout_from_json(data, KNOWN)
    message = str(info.value)
    assert "width" in message and "region 0 box" in message and "region 1 tokens" in message
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        layout_from_json('{"width": 512,', KNOWN)


def test_empty_bank_message_and_unchecked_tokens_without_a_bank():
    with pytest.raises(InvalidInputError, match="the bank has no concepts"):
        layout_from_json(_with_region(), set())
    assert layout_from_json(_with_region(prompt="a <any9> thing")).regions[0].tokens == ("<any9>",)


def test_validate_layout_checks_layouts_built_in_code():
    good = Layout(width=512, height=512, background="", regions=(Region("<dog1>", (0, 0, 0.5, 1 + 1e-7)),))
    checked = validate_layout(good, KNOWN)
    assert checked.regions[0].box == (0.0, 0.0, 0.5, 1.0) and checked.regions[0].tokens == ("<dog1>",)
    with pytest.raises(InvalidInputError, match="region 0 box"):
        validate_layout(Layout(width=512, height=512, background="", regions=(Region("x", (0.6, 0, 0.5, 1)),)))
    with pytest.raises(InvalidInputError, match="at most 1"):
        validate_layout(Layout(width=512, height=512, background="", regions=(good.regions[0],) * 2), max_regions=1)


def test_find_tokens_prefers_longest_and_reports_unknown_angle_tokens():
    assert find_tokens("<dog10> and <dog1>, sks dog, asks, <typo1>", {"<dog1>", "<dog10>", "sks"}) == (
        "<dog10>",
        "<dog1>",
        "sks",
        "<typo1>",
    )


def test_box_masks_are_pixel_exact_and_tile_without_gaps():
    layout = layout_from_json(
        _layout(
            width=64,
            height=32,
            regions=[
                {"prompt": "<dog1>", "box": [0, 0, 0.5, 1]},
                {"prompt": "<cat1>", "box": [0.5, 0, 1, 1]},
                {"prompt": "<dog1>", "box": [0.25, 0.25, 0.75, 0.5]},
            ],
        ),
        KNOWN,
    )
    masks = box_masks(layout, 8, 16)
    assert masks.shape == (3, 8, 16) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(masks[0] + masks[1], torch.ones(8, 16))  # shared edge: no overlap, no gap
    assert masks[0, :, :8].all() and not masks[0, :, 8:].any()
    expected = torch.zeros(8, 16)
    expected[2:4, 4:12] = 1
    assert torch.equal(masks[2], expected)


def test_box_masks_count_a_pixel_when_its_centre_is_inside():
    layout = layout_from_json(
        _layout(width=80, height=80, regions=[{"prompt": "<dog1>", "box": [0.12, 0.0, 0.33, 1.0]}])
    )
    row = box_masks(layout, 10, 10)[0, 0]
    assert row.tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # centres 1.5 and 2.5 lie in [1.2, 3.3); 3.5 does not


def test_box_masks_keep_a_small_box_visible_on_a_coarse_grid():
    layout = layout_from_json(
        _layout(width=512, height=512, regions=[{"prompt": "<dog1>", "box": [0.4, 0.4, 0.45, 0.45]}])
    )
    masks = box_masks(layout, 4, 4, dtype=torch.float16)
    assert masks.dtype == torch.float16 and masks.sum() == 1
    assert box_masks(Layout(width=8, height=8, background=""), 5, 7).shape == (0, 5, 7)
    with pytest.raises(InvalidInputError, match="positive integer"):
        box_masks(layout, 0, 4)


def test_core_pixel_bounding_boxes_replace_region_boxes_in_order():
    layout = core.layout_from_json(
        '{"version": 1, "width": 512, "height": 256, "background": "a beach", "regions": ['
        '{"prompt": "a <dog1> dog", "box": [0, 0, 0.5, 1]}, {"prompt": "a <cat1> cat", "box": [0.5, 0, 1, 1]}]}'
    )
    for given in ({"x": 128, "y": 64, "width": 256, "height": 128},
                  [{"x": 128, "y": 64, "width": 256, "height": 128, "score": 0.9}],
                  [[{"x": 128, "y": 64, "width": 256, "height": 128}], [{"x": 0, "y": 0, "width": 8, "height": 8}]]):
        moved = core.with_boxes(layout, core.boxes_from_pixels(given, layout.width, layout.height))
        assert moved.regions[0].box == (0.25, 0.25, 0.75, 0.75) and moved.regions[1] == layout.regions[1]
    with pytest.raises(core.InvalidInputError, match="3 bounding boxes but the layout has 2"):
        core.with_boxes(layout, core.boxes_from_pixels([{"x": 0, "y": 0, "width": 8, "height": 8}] * 3, 512, 256))
    with pytest.raises(core.InvalidInputError, match="needs numeric x, y, width and height"):
        core.boxes_from_pixels([{"x": 1}], 512, 256)


def test_huge_text_is_refused_and_a_bad_value_is_quoted_short():
    with pytest.raises(InvalidInputError, match=r"background: is 5000000 characters; keep it under 4000") as err:
        layout_from_json(_layout(background="x" * 5_000_000), KNOWN)
    assert len(str(err.value)) < 1000
    with pytest.raises(InvalidInputError, match=r"region 0 prompt: is 10000 characters") as err:
        layout_from_json(_with_region(prompt="a <dog1> dog " + "y" * 9987), KNOWN)
    assert len(str(err.value)) < 1000
    huge_box = ["z" * 5_000_000, 0, 1, 1]
    with pytest.raises(InvalidInputError, match=r"\(5000\d{3} characters\)") as err:
        layout_from_json(_with_region(box=huge_box), KNOWN)
    assert len(str(err.value)) < 1000, "the bad value is repeated whole"
    with pytest.raises(InvalidInputError, match="at most 1000000 are read"):
        layout_from_json(json.dumps(_layout(background="x" * 1_000_001)), KNOWN)
