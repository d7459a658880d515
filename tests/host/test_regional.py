"""R2MoERegionalApply on the real host: equivalence with the bank patch, stock uncond, placement, caching, errors."""

from __future__ import annotations

import json

import pytest
import torch
from comfy_inprocess import call_node

from r2moe_testkit.banks import add_random_concept
from r2moe_testkit.sampling import first_call as first_call_at
from r2moe_testkit.sampling import sample

SIZE = 128  # latent 16x16: attention grids 16, 8, 4 and 2 in the tiny UNet
DOG = "a <dog1> dog"
CAT = "a <cat1> cat"
LEFT, RIGHT, FULL = [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def bank(host, tiny):
    empty = call_node("R2MoENewBank", model=tiny[0], rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    with_dog = add_random_concept(host.core, empty, "dog", "<dog1>", seed=1, scale=0.2)
    return add_random_concept(host.core, with_dog, "cat", "<cat1>", seed=2, scale=0.2)


def make_layout(background: str, regions: list[tuple], size: int = SIZE):
    """Regions as (prompt, box) or (prompt, box, own strength)."""
    layout = {"width": size, "height": size, "background": background}
    layout["regions"] = [{"prompt": r[0], "box": r[1], "strength": r[2] if len(r) > 2 else None} for r in regions]
    return call_node("R2MoELayoutFromJSON", layout_json=json.dumps(layout))[0]


def regional(tiny, bank, layout, strength=1.0, **kw):
    return call_node(
        "R2MoERegionalApply", model=tiny[0], clip=tiny[1], bank=bank, layout=layout, strength=strength, **kw
    )[0]


def first_call(model, clip, positive, negative="", cfg=1.0):
    """Denoiser output of the first UNet call on this file's canvas, per chunk kind (0 = cond, 1 = uncond)."""
    return first_call_at(model, clip, positive, negative, cfg, size=SIZE)


def runtime_of(model):
    slots = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    return next(iter(slots.values())).runtime


def test_one_full_canvas_region_equals_the_bank_patch_on_that_prompt(tiny, bank):
    model, clip, _ = tiny
    prompt = f"{DOG} on the beach"
    reg = regional(tiny, bank, make_layout(prompt, [(prompt, FULL)]))
    bank_model, bank_clip = call_node("R2MoEApplyBank", model=model, clip=clip, bank=bank, strength=1.0)
    via_regions = first_call(reg, clip, "whatever the user typed")[0]  # the positive prompt is replaced
    via_bank = first_call(bank_model, bank_clip, prompt)[0]
    no_experts = first_call(model, bank_clip, prompt)[0]
    effect = (via_bank - no_experts).abs().max().item()
    mismatch = (via_regions - via_bank).abs().max().item()
    assert effect > 1e-2, "the experts must change the output, or the comparison proves nothing"
    assert mismatch < 1e-4, f"regional vs bank patch differ by {mismatch} (expert effect {effect})"
    # A whole run (CFG 7 amplifies float rounding): latents reach a few hundred here, so compare relatively.
    full_run = sample(reg, clip, "anything", negative="blurry", steps=2, cfg=7.0, size=SIZE)
    bank_run = sample(bank_model, bank_clip, prompt, negative="blurry", steps=2, cfg=7.0, size=SIZE)
    relative = ((full_run - bank_run).abs().max() / bank_run.abs().max()).item()
    assert relative < 1e-5, f"regional vs bank patch sampling differ by {relative:.2e} of the latent range"


def test_unconditional_rows_are_bit_identical_to_stock(tiny, bank):
    model, clip, _ = tiny
    layout = make_layout("a garden", [(DOG, LEFT), (CAT, RIGHT)])
    stock = first_call(model, clip, "a garden", negative="blurry", cfg=7.0)
    reg = first_call(regional(tiny, bank, layout), clip, "a garden", negative="blurry", cfg=7.0)
    assert torch.equal(stock[1], reg[1]), "uncond prediction must be the stock model's"
    assert not torch.allclose(stock[0], reg[0], atol=1e-4), "cond prediction must follow the layout"
    # On top of the bank patch (which it wraps): uncond still stock, cond the same regional blend.
    bank_model, _ = call_node("R2MoEApplyBank", model=model, clip=clip, bank=bank, strength=1.0)
    stacked = call_node(
        "R2MoERegionalApply", model=bank_model, clip=clip, bank=bank, layout=layout, strength=1.0
    )[0]
    both = first_call(stacked, clip, "a garden", negative="blurry", cfg=7.0)
    assert torch.equal(stock[1], both[1]) and torch.equal(reg[0], both[0])


def test_swapping_boxes_swaps_where_each_region_lands(tiny, bank):
    clip = tiny[1]
    scene = "a garden"

    def out(dog_box, cat_box, dog_strength=None, cat_strength=None):
        layout = make_layout(scene, [(DOG, dog_box, dog_strength), (CAT, cat_box, cat_strength)])
        return first_call(regional(tiny, bank, layout), clip, scene)[0]

    half = SIZE // 16  # latent columns per half
    halves = {"left": (..., slice(0, half)), "right": (..., slice(half, None))}
    energy = {}  # (region, where it was placed) -> {half: mean squared effect there}
    for dog_box, cat_box in ((LEFT, RIGHT), (RIGHT, LEFT)):
        both = out(dog_box, cat_box)
        # A region's effect: the output minus the output with that region switched off (its own strength 0).
        effects = {
            ("dog", "left" if dog_box == LEFT else "right"): both - out(dog_box, cat_box, dog_strength=0.0),
            ("cat", "left" if cat_box == LEFT else "right"): both - out(dog_box, cat_box, cat_strength=0.0),
        }
        for key, effect in effects.items():
            energy[key] = {side: effect[idx].square().mean().item() for side, idx in halves.items()}
    # Convolutions spread every change over the whole (tiny, random) UNet, so compare energies, not zeros:
    # measured inside/outside ratios are 1.6-1.75 on CPU; without regional attention they would be ~1.
    for region in ("dog", "cat"):
        for side, other in (("left", "right"), ("right", "left")):
            placed_here, placed_there = energy[(region, side)], energy[(region, other)]
            assert placed_here[side] > 1.3 * placed_here[other], f"{region} placed {side} acts mostly elsewhere"
            assert placed_here[side] > 1.3 * placed_there[side], f"moving {region} away did not move its effect"


def test_masks_are_resized_once_per_grid_and_kv_once_per_run(tiny, bank):
    layout = make_layout("a garden", [(DOG, LEFT), (CAT, RIGHT)])
    model = regional(tiny, bank, layout)
    runtime = runtime_of(model)
    sample(model, tiny[1], "x", negative="blurry", steps=2, cfg=7.0, size=SIZE)
    assert runtime.masks.sizes == {(16, 16), (8, 8), (4, 4), (2, 2)}
    assert runtime.masks.resizes == 4
    assert runtime.kv_computations == 16, "one K/V set per layer per run, not per step"
    deltas = runtime.experts.delta_computations
    assert deltas == 2 * 32, "ΔK/ΔV once per region and projection"
    sample(model, tiny[1], "x", negative="blurry", steps=2, cfg=7.0, size=SIZE, seed=3)
    assert runtime.masks.resizes == 4 and runtime.experts.delta_computations == deltas
    assert runtime.kv_computations == 32, "a new run recomputes K/V (the weights may have been re-patched)"


def test_mask_input_overrides_the_boxes(tiny, bank):
    clip = tiny[1]
    a = make_layout("a garden", [(DOG, LEFT), (CAT, RIGHT)])
    b = make_layout("a garden", [(DOG, RIGHT), (CAT, LEFT)])
    _, masks_b = call_node("R2MoELayoutPreview", layout=b)
    assert masks_b.shape == (2, SIZE, SIZE)
    out_a = first_call(regional(tiny, bank, a), clip, "x")[0]
    out_b = first_call(regional(tiny, bank, b), clip, "x")[0]
    out_a_masked = first_call(regional(tiny, bank, a, mask=masks_b), clip, "x")[0]
    assert torch.allclose(out_a_masked, out_b, atol=1e-6)
    assert not torch.allclose(out_a_masked, out_a, atol=1e-4)


def test_layout_with_tokens_the_bank_lacks_is_refused(host, tiny, bank):
    layout = make_layout("a park", [("a <bird9> bird", LEFT)])
    expected = r"(?s)'<bird9>' is not a known concept token.*against the connected bank"
    with pytest.raises(host.core.InvalidInputError, match=expected):
        regional(tiny, bank, layout)


def test_mask_count_must_match_the_regions(host, tiny, bank):
    layout = make_layout("a garden", [(DOG, LEFT), (CAT, RIGHT)])
    with pytest.raises(host.core.InvalidInputError, match=r"1 mask\(s\) but the layout has 2 region"):
        regional(tiny, bank, layout, mask=torch.ones(1, 64, 64))


def test_layer_choice_and_soft_edges_act_and_layers_left_out_are_stock(tiny, bank):
    model, clip, _ = tiny
    layout = make_layout("a garden", [(DOG, LEFT), (CAT, RIGHT)])
    stock = first_call(model, clip, "a garden")[0]
    every = first_call(regional(tiny, bank, layout), clip, "a garden")[0]
    none = first_call(regional(tiny, bank, layout, min_tokens=1 << 20), clip, "a garden")[0]
    assert torch.equal(none, stock), "layers below min_tokens attend to the sampler's prompt, as without the patch"
    top = first_call(regional(tiny, bank, layout, min_tokens=256), clip, "a garden")[0]  # the 16x16 grid only
    assert not torch.allclose(top, every, atol=1e-5) and not torch.allclose(top, stock, atol=1e-5)
    for soft in ({"mask_grow": 0.1}, {"mask_feather": 0.1}):
        changed = first_call(regional(tiny, bank, layout, **soft), clip, "a garden")[0]
        assert not torch.allclose(changed, every, atol=1e-5), f"{soft} must change the blend"


def test_finest_grids_picks_the_same_kind_of_layers_at_every_image_size(tiny, bank):
    """finest_grids counts grids from the UNet's finest attention grid, so one setting names the 16x16 and 8x8
    grids at 128 px and the 32x32 and 16x16 grids at 256 px; a token count would need changing with the size."""
    clip = tiny[1]
    for size, top_two in ((SIZE, 64), (2 * SIZE, 256)):
        layout = make_layout("a garden", [(DOG, LEFT), (CAT, RIGHT)], size=size)

        def drawn(layout=layout, size=size, **kw):
            return first_call_at(regional(tiny, bank, layout, **kw), clip, "a garden", "", 1.0, size=size)[0]

        by_level, by_tokens = drawn(finest_grids=2), drawn(min_tokens=top_two)
        assert torch.equal(by_level, by_tokens), f"at {size} px, 2 finest grids = layers of >= {top_two} tokens"
        assert not torch.allclose(by_level, drawn(), atol=1e-5), "leaving the coarse grids out must change the image"
        assert torch.equal(drawn(finest_grids=8), drawn()), "more levels than the UNet has: every layer blends"


def test_blend_settings_out_of_range_are_refused_before_sampling(host, tiny, bank):
    layout = make_layout("a garden", [(DOG, LEFT), (CAT, RIGHT)])
    with pytest.raises(host.core.InvalidInputError, match=r"mask|feather|fraction"):
        regional(tiny, bank, layout, mask_feather=0.9)
    with pytest.raises(host.core.InvalidInputError, match=r"finest_grids must be between 0"):
        regional(tiny, bank, layout, finest_grids=99)
