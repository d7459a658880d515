"""The multi-concept track: quick mode end to end on the shipped world model, the world UNet's regional hook
(one full-canvas region is exactly the plain expert hook), and the SAM stand-in on a drawn scene."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from world.concepts import load_concepts
from world.hlag import RowRegions, colour_segmenter
from world.methods import Budget, make_method
from world.multiconcept import VARIANTS, scene_sets
from world.protocol import ConceptData, World, train_task
from world.recogniser import draw
from world.sampler import euler_cfg, sample
from world.text import TextEncoder
from world.unet import UNet
from world.vae import WorldVAE
from world.vocab import SIZE

from r2moe_core.compose.layout import Layout, Region
from r2moe_core.compose.masks.mask_refinement import RefineOptions, refine_masks
from r2moe_core.compose.regional_attention import RegionalRuntime
from r2moe_core.moe.delta_cache import BankRuntime

REPO = Path(__file__).resolve().parents[2]
CONCEPTS = REPO / "bench" / "world" / "concepts_10.json"


def _concepts(count: int) -> list[ConceptData]:
    return [ConceptData.from_spec(spec, 3) for spec in load_concepts(CONCEPTS)[:count]]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("multiconcept")
    subprocess.run([sys.executable, str(REPO / "bench" / "multiconcept.py"), "--quick", "--out", str(out)],
                   check=True, timeout=900)
    table = (out / "multiconcept_quick.md").read_text()
    assert all(f"| {name} |" in table for name in VARIANTS)
    return json.loads((out / "multiconcept_quick.json").read_text())


def test_quick_mode_reports_fractions_for_every_variant(quick_results) -> None:
    assert set(quick_results["variants"]) == set(VARIANTS)
    for name, numbers in quick_results["variants"].items():
        for part in (numbers, numbers["pairs"], numbers["triples"]):
            for key in ("omission", "leakage"):
                assert isinstance(part[key], float) and 0.0 <= part[key] <= 1.0, (name, key)
        assert numbers["images"] > 0 and numbers["placements"] > numbers["images"]
    accuracy = quick_results["recogniser_accuracy"]
    assert 0.0 <= accuracy["balanced"] <= 1.0 and all(0.0 <= v <= 1.0 for v in accuracy["per_class"].values())
    for regions in ("2_regions", "3_regions"):
        timing = quick_results["timing"][regions]
        assert timing["ratio"] > 0 and timing["boxes_s_per_image"] > 0 and timing["bank_only_s_per_image"] > 0
    assert "Not SAM" in quick_results["settings"]["sam_substitution"]


def test_the_result_has_the_shape_the_goals_are_read_from(quick_results) -> None:
    assert quick_results["default"] in quick_results["variants"]
    assert 0.0 <= quick_results["judge_accuracy"] <= 1.0
    assert 0.0 <= quick_results["alone_omission"] <= 1.0  # the floor for a composition's omission
    assert quick_results["provenance"]["script"] == "bench/multiconcept.py"
    for name, numbers in quick_results["variants"].items():
        assert isinstance(numbers["image_alignment"], float), name
        assert numbers["image_alignment_vs_alone"] is None or numbers["image_alignment_vs_alone"] > 0, name
    regional, stacked = quick_results["variants"]["lora_stack_regional"], quick_results["variants"]["lora_stack"]
    assert regional["images"] == stacked["images"], "the regional-LoRA baseline draws the same prompts and seeds"


def test_the_hlag_sweep_changes_one_setting_at_a_time_and_names_its_world(tmp_path) -> None:
    subprocess.run([sys.executable, str(REPO / "bench" / "hlag_sweep.py"), "--quick", "--out", str(tmp_path)],
                   check=True, timeout=900)
    results = json.loads((tmp_path / "hlag_sweep_quick.json").read_text())
    assert results["world"].endswith(".safetensors") and 0.0 <= results["judge_accuracy"] <= 1.0
    rows = results["rows"]
    assert rows[0]["changes"] == {} and all(len(r["changes"]) == 1 for r in rows[1:])
    assert all(0.0 <= r["omission"] <= 1.0 and "beats_default" in r for r in rows[1:])


@pytest.fixture(scope="module")
def random_world() -> tuple[World, object, ConceptData]:
    """A random world model with one concept learned for two steps: enough for exact-equality checks."""
    torch.manual_seed(0)
    world = World(UNet(), TextEncoder(), WorldVAE())
    concept = _concepts(1)[0]
    method = make_method("r2moe", world.unet, Budget(steps=2, batch_size=1))
    train_task(world, method, concept, 2, seed=0)
    return world, method, concept


def test_one_full_canvas_region_equals_the_plain_delta_hook(random_world) -> None:
    world, method, concept = random_world
    prompt = f"photo of a {concept.token} {concept.class_word}, grass background"
    context = world.text([prompt], method.tokens)
    scale = 50.0  # two training steps move the experts little: scale them so a difference would show
    experts = BankRuntime(method.bank, scale)
    entry = experts.entry_for(context, None)
    layout = Layout(width=64, height=64, background=prompt, regions=(Region(prompt, (0.0, 0.0, 1.0, 1.0),
                                                                             (concept.token,)),))
    regional = RowRegions(method.bank.layers, [RegionalRuntime(method.bank, layout, context, [context], 1.0, scale)])
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([500.0])
    with torch.no_grad():
        base = world.unet(x, t, context)
        plain = world.unet(x, t, context, lambda name, ctx: experts.delta(entry, name))
        blended = world.unet(x, t, context, None, regional)
    assert (plain - base).abs().max() > 1e-3, "the experts must change the output for the check to mean anything"
    torch.testing.assert_close(blended, plain, atol=1e-4, rtol=0)


def test_the_track_sampler_is_the_benchmark_sampler(random_world) -> None:
    world, _, _ = random_world
    context = world.text(["one red circle on the left, grass background"] * 2)

    def eps(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return world.unet(x, t, c)

    empty = world.empty.expand(2, -1, -1)
    ours = euler_cfg(lambda x, t: eps(x, t, context), lambda x, t: eps(x, t, empty), 2, 4, 5.0, seed=3)
    torch.testing.assert_close(ours, sample(eps, context, world.empty, steps=4, cfg=5.0, seed=3), atol=1e-5, rtol=0)


def test_the_sam_stand_in_finds_the_object_in_its_box() -> None:
    spec = load_concepts(CONCEPTS)[0]
    image = draw("grass", spec.object(), (0.25, 0.5), 0.36)
    boxes = (Region("a", (0.0, 0.0, 0.5, 1.0)), Region("b", (0.5, 0.0, 1.0, 1.0)))
    layout = Layout(width=SIZE, height=SIZE, background="grass background", regions=boxes)
    result = refine_masks(colour_segmenter(image), layout, SIZE, SIZE, RefineOptions(min_coverage=0.05))
    assert result.fallbacks == (1,), "the empty right half keeps its box, the left one is refined"
    _, xs = result.masks[0].nonzero(as_tuple=True)
    assert 0.05 < result.coverage[0] < 0.5 and abs(float(xs.float().mean()) + 0.5 - SIZE / 4) < SIZE / 20


def test_prompts_place_every_concept() -> None:
    sets = scene_sets(_concepts(3))
    assert len(sets["pairs"]) == 6 and len(sets["triples"]) == 3
    pair = sets["pairs"][0]
    assert pair.prompt == "photo of a <new1> toy on the left and a <new2> toy on the right, sky background"
    assert pair.region_prompts[1] == "photo of a <new2> toy on the right, sky background"
    triple = sets["triples"][0]
    assert triple.prompt.count(" and ") == 1 and "in the center" in triple.prompt
    assert [r.tokens for r in triple.layout(["<new1>", "<new2>", "<new3>"]).regions] == [
        ("<new1>",), ("<new2>",), ("<new3>",)]


def test_the_grid_shows_each_image_whole_at_its_own_size(tmp_path) -> None:
    import numpy as np
    from multiconcept import grid
    from PIL import Image

    image = np.zeros((128, 128, 3), np.uint8)
    image[-8:, -8:] = 255  # a mark in the corner a smaller cell would cut off
    grid({"boxes": [image, image], "bank_only": [image]}, tmp_path / "grid.png")
    drawn = np.asarray(Image.open(tmp_path / "grid.png"))
    assert drawn.shape[:2] == (256, 130 + 256)
    assert (drawn[120:128, 130 + 248:130 + 256] == 255).all() and (drawn[248:256, 250:258] == 255).all()
