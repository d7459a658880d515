"""R2MoEHierarchicalSampler equals the stock-node graphs it stands for (same seed, same latent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from comfy_inprocess import call_node, run_graph

from r2moe_testkit.banks import add_random_concept
from r2moe_testkit.sam import TINY_SAM_NAME, write_tiny_sam
from r2moe_testkit.sampling import encode
from r2moe_testkit.workflows import load_api_workflow

SIZE = 64  # latent 8x8: quick, and the tiny UNet still has four attention grids
STEPS, CFG, SEED = 4, 5.0, 7
DOG, CAT = "a <dog1> dog", "a <cat1> cat"


@pytest.fixture(scope="module")
def bank(host, tiny):
    empty = call_node("R2MoENewBank", model=tiny[0], rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    with_dog = add_random_concept(host.core, empty, "dog", "<dog1>", seed=1, scale=0.2)
    return add_random_concept(host.core, with_dog, "cat", "<cat1>", seed=2, scale=0.2)


@pytest.fixture(scope="module")
def sam(host):
    import folder_paths

    write_tiny_sam(host.base_dir / "models" / "sams" / TINY_SAM_NAME)
    folder_paths.filename_list_cache.clear()
    return call_node("R2MoESAMLoader", sam_name=TINY_SAM_NAME)[0]


@pytest.fixture(scope="module")
def setup(tiny, bank):
    data = {"width": SIZE, "height": SIZE, "background": "a garden",
            "regions": [{"prompt": DOG, "box": [0.0, 0.1, 0.5, 1.0]}, {"prompt": CAT, "box": [0.5, 0.2, 1.0, 0.9]}]}
    layout = call_node("R2MoELayoutFromJSON", layout_json=json.dumps(data))[0]
    latent = call_node("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)[0]
    return {"layout": layout, "latent": latent, "positive": encode(tiny[1], "a garden"),
            "negative": encode(tiny[1], "blurry")}  # fmt: skip


def hierarchical(tiny, bank, sam, setup, switch_at, **kw):
    model, clip, vae = tiny
    return call_node(
        "R2MoEHierarchicalSampler", model=model, clip=clip, vae=vae, bank=bank, layout=setup["layout"], sam=sam,
        positive=setup["positive"], negative=setup["negative"], latent_image=setup["latent"], seed=SEED,
        steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal", denoise=1.0, switch_at=switch_at,
        strength=1.0, **kw,
    )  # fmt: skip


def regional(tiny, bank, setup, **kw):
    return call_node("R2MoERegionalApply", model=tiny[0], clip=tiny[1], bank=bank, layout=setup["layout"],
                     strength=1.0, **kw)[0]  # fmt: skip


def advanced(model, setup, latent, add_noise, sampler, start, end, leftover):
    return call_node(
        "KSamplerAdvanced", model=model, add_noise=add_noise, noise_seed=SEED, steps=STEPS, cfg=CFG,
        sampler_name=sampler, scheduler="normal", positive=setup["positive"], negative=setup["negative"],
        latent_image=latent, start_at_step=start, end_at_step=end, return_with_leftover_noise=leftover,
    )[0]  # fmt: skip


def assert_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    diff = (a - b).abs().max().item()
    assert diff <= 1e-5 * max(b.abs().max().item(), 1.0), f"{what} differ by {diff}"


def test_switch_at_one_is_regional_apply_plus_ksampler(tiny, bank, sam, setup):
    latent, masks, image = hierarchical(tiny, bank, sam, setup, switch_at=1.0)
    stock = call_node(
        "KSampler", model=regional(tiny, bank, setup), seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
        scheduler="normal", positive=setup["positive"], negative=setup["negative"], latent_image=setup["latent"],
        denoise=1.0,
    )[0]  # fmt: skip
    assert_same(latent["samples"], stock["samples"], "latents")
    assert torch.equal(masks, call_node("R2MoELayoutPreview", layout=setup["layout"])[1])
    assert image.shape == (1, SIZE, SIZE, 3)


def test_finest_grids_reaches_the_sampler_as_it_reaches_regional_apply(tiny, bank, sam, setup):
    latent = hierarchical(tiny, bank, sam, setup, switch_at=1.0, finest_grids=1)[0]["samples"]
    stock = call_node(
        "KSampler", model=regional(tiny, bank, setup, finest_grids=1), seed=SEED, steps=STEPS, cfg=CFG,
        sampler_name="euler", scheduler="normal", positive=setup["positive"], negative=setup["negative"],
        latent_image=setup["latent"], denoise=1.0,
    )[0]  # fmt: skip
    assert_same(latent, stock["samples"], "latents")
    every = hierarchical(tiny, bank, sam, setup, switch_at=1.0)[0]["samples"]
    assert (latent - every).abs().max().item() > 1e-4, "finest_grids must change which layers blend"


def test_mid_switch_equals_two_ksampler_advanced_around_sam_refine(tiny, bank, sam, setup):
    latent, masks, image = hierarchical(tiny, bank, sam, setup, switch_at=0.5)
    switch = STEPS // 2
    box_model = regional(tiny, bank, setup)
    first = advanced(box_model, setup, setup["latent"], "enable", "euler", 0, switch, "enable")
    x0 = advanced(box_model, setup, first, "disable", "euler", switch, switch + 1, "disable")
    x0_image = call_node("VAEDecode", samples=x0, vae=tiny[2])[0]
    sam_masks = call_node("R2MoESAMRefine", image=x0_image, layout=setup["layout"], sam=sam)[0]
    final = advanced(regional(tiny, bank, setup, mask=sam_masks), setup, first, "disable", "euler", switch, 10000,
                     "disable")  # fmt: skip
    assert_same(image, x0_image, "x0 images")
    assert torch.equal(masks, sam_masks)
    assert_same(latent["samples"], final["samples"], "latents")
    # The comparison only means something if SAM changed the masks and the masks changed the result.
    boxes = call_node("R2MoELayoutPreview", layout=setup["layout"])[1]
    assert not torch.equal(masks, boxes)
    boxes_only = hierarchical(tiny, bank, sam, setup, switch_at=1.0)[0]["samples"]
    assert (latent["samples"] - boxes_only).abs().max().item() > 1e-3


def test_shipped_workflows_give_the_same_image(host, sam):
    def run(name: str, prefix: str) -> np.ndarray:
        graph = load_api_workflow(name)
        for node in graph.values():
            if node["class_type"] == "EmptyLatentImage":
                node["inputs"].update(width=SIZE, height=SIZE)
            if node["class_type"] == "SaveImage":
                node["inputs"]["filename_prefix"] = prefix
        result = run_graph(graph, prompt_id=prefix)
        assert result.success, result.messages
        from PIL import Image

        (saved,) = [entry for out in result.outputs.values() for entry in out.get("images", [])
                    if entry["type"] == "output"]  # fmt: skip
        return np.asarray(Image.open(host.base_dir / "output" / saved["subfolder"] / saved["filename"]))

    one_node = run("api_regional_hierarchical.json", "hlag_one_node")
    two_stage = run("api_regional_two_stage.json", "hlag_two_stage")
    assert one_node.shape == (SIZE, SIZE, 3)
    assert np.array_equal(one_node, two_stage)


def test_without_a_sam_file_the_graph_runs_with_box_masks_all_the_way(host, tiny, bank, setup):
    """A user with no SAM file: the shipped one-node workflow minus its SAM loader still runs, and gives the
    boxes-all-the-way image (Regional Apply + KSampler), whatever switch_at says (mask_source auto)."""
    graph = load_api_workflow("api_regional_hierarchical.json")
    del graph["4"]
    graph["8"]["inputs"].pop("sam")
    for node in graph.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=SIZE, height=SIZE)
    assert graph["8"]["inputs"]["switch_at"] < 1.0
    result = run_graph(graph, prompt_id="hlag-no-sam")
    assert result.success, result.messages
    latent, masks, _ = hierarchical(tiny, bank, None, setup, switch_at=0.5)
    boxes = call_node("R2MoELayoutPreview", layout=setup["layout"])[1]
    assert torch.equal(masks, boxes)
    assert_same(latent["samples"], hierarchical(tiny, bank, None, setup, switch_at=1.0)[0]["samples"], "latents")
    explicit = hierarchical(tiny, bank, None, setup, switch_at=0.5, mask_source="boxes")
    assert torch.equal(explicit[0]["samples"], latent["samples"])


def test_attention_masks_are_read_in_the_box_steps_and_used_after_them(tiny, bank, setup):
    """Steps 0..T sample with boxes (as KSamplerAdvanced would), the masks then come from the recorded attention
    (near their boxes, not the boxes), and steps T..end equal KSamplerAdvanced on Regional Apply with those masks."""
    latent, masks, image = hierarchical(tiny, bank, None, setup, switch_at=0.5, mask_source="attention",
                                        attention_margin=0.1)
    switch = STEPS // 2
    first = advanced(regional(tiny, bank, setup), setup, setup["latent"], "enable", "euler", 0, switch, "enable")
    final = advanced(regional(tiny, bank, setup, mask=masks), setup, first, "disable", "euler", switch, 10000,
                     "disable")  # fmt: skip
    assert_same(latent["samples"], final["samples"], "latents")
    boxes = call_node("R2MoELayoutPreview", layout=setup["layout"])[1]
    assert masks.shape == boxes.shape and not torch.equal(masks, boxes)
    reach = 8 * round(0.1 * SIZE / 8)  # the margin in whole cells of the finest attention grid (the 8x8 latent)
    near = torch.nn.functional.max_pool2d(boxes[:, None], 2 * reach + 1, 1, reach)[:, 0]
    assert (masks <= near).all() and (masks.sum(0) <= 1).all()
    assert image.shape == (1, SIZE, SIZE, 3) and image.min() >= 0 and image.max() <= 1 and image.max() > 0.5
    wider = hierarchical(tiny, bank, None, setup, switch_at=0.5, mask_source="attention", attention_margin=0.3)
    assert not torch.equal(wider[1], masks), "the margin must act"


@pytest.mark.parametrize(("kw", "message"), [
    ({"mask_source": "sam"}, "no SAM is connected"),
    ({"mask_source": "attention", "switch_at": 0.0}, "switch_at 0 leaves none"),
    ({"mask_source": "segment"}, "not one of"),
])
def test_a_mask_source_that_cannot_work_is_refused_before_sampling(host, tiny, bank, setup, kw, message):
    kw = {"switch_at": 0.5} | kw
    with pytest.raises(host.core.InvalidInputError, match=message):
        hierarchical(tiny, bank, None, setup, **kw)


def test_eta_after_the_switch_acts_on_the_refined_stage_only(tiny, bank, sam, setup):
    same = hierarchical(tiny, bank, sam, setup, 0.5)
    explicit = hierarchical(tiny, bank, sam, setup, 0.5, strength_after_switch=1.0)
    weaker = hierarchical(tiny, bank, sam, setup, 0.5, strength_after_switch=0.25)
    assert torch.equal(same[0]["samples"], explicit[0]["samples"]), "-1 means the same η as before the switch"
    assert not torch.allclose(weaker[0]["samples"], same[0]["samples"], atol=1e-4), "η after the switch must act"
    assert torch.equal(weaker[2], same[2]), "the x0 image SAM segments comes from the box stage, untouched"
